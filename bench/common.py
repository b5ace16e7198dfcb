"""What the benchmarks share: a fresh Anvil of their own, free ports, percentiles, progress
lines. Imported as `bench.common` (each benchmark puts the repository root on sys.path)."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from offchain.indexer.rpc import RpcClient

ROOT = Path(__file__).resolve().parent.parent


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` 0.99 for p99) of non-empty `values`."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


@contextmanager
def anvil(chain_id: int, *options: str) -> Iterator[str]:
    """A fresh Anvil on a free loopback port (`options` added to its command line), once
    it answers; yields its URL and stops it afterwards."""
    binary = shutil.which("anvil", path=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    if binary is None:
        raise SystemExit("anvil not found: run `make setup` first")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [binary, "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id)]
    command += ["--silent", *options]
    # Its output goes to a file: a pipe nobody reads could block it.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            probe = RpcClient(url, retries=0)
            for _ in range(200):
                try:
                    probe.chain_id()
                    break
                except Exception:
                    if process.poll() is not None:
                        log.seek(0)
                        raise SystemExit(f"anvil exited: {log.read().decode()[-2000:]}") from None
                    time.sleep(0.05)
            else:
                raise SystemExit(f"anvil did not answer at {url}")
            probe.close()
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
