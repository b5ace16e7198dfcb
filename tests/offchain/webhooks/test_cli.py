"""`chainbill webhooks run`: one round with --once; as a service it delivers until SIGTERM
and then stops cleanly (exit status 0). A separate process, as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from typer.testing import CliRunner

from api.cli import app
from offchain.db import webhook_repository as repo
from offchain.db.models import WebhookDeliveryStatus
from offchain.webhooks import endpoints
from tests.offchain.indexer.helpers import Mirror, wait_until
from tests.offchain.webhooks.receiver import Receiver

ROOT = Path(__file__).resolve().parents[3]


def _prepare(
    engine: Engine,
    mirror: Mirror,
    chain: Any,
    merchant: Any,
    issue: Callable[..., bytes],
    receiver: Receiver,
    tmp_path: Path,
) -> Path:
    with engine.begin() as conn:
        created = endpoints.create_endpoint(conn, merchant.address, receiver.url)
    receiver.secrets = [created.secret]
    issue()
    issue()
    chain.mine(3)
    mirror.sync()
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    return manifest


def _statuses(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [d.status for d in repo.list_deliveries(conn, None)]


def test_run_once_produces_and_delivers(
    engine: Engine,
    mirror: Mirror,
    chain: Any,
    merchant: Any,
    issue: Callable[..., bytes],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    manifest = _prepare(engine, mirror, chain, merchant, issue, receiver, tmp_path)
    url = engine.url.render_as_string(hide_password=False)
    args = ["webhooks", "run", "--once", "--database-url", url, "--manifest", str(manifest)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "produced 2 event(s), made 2 delivery attempt(s)" in result.stdout
    assert len(receiver.processed_ids()) == 2
    bad = CliRunner().invoke(app, [*args, "--remind-before", "soon"])
    assert bad.exit_code == 2 and "comma-separated" in bad.stderr


def test_run_stops_cleanly_on_sigterm(
    engine: Engine,
    mirror: Mirror,
    chain: Any,
    merchant: Any,
    issue: Callable[..., bytes],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    manifest = _prepare(engine, mirror, chain, merchant, issue, receiver, tmp_path)
    url = engine.url.render_as_string(hide_password=False)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "api.cli",
            "webhooks",
            "run",
            "--database-url",
            url,
            "--manifest",
            str(manifest),
            "--poll-interval",
            "0.05",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until(
            lambda: (
                _statuses(engine) == [WebhookDeliveryStatus.SUCCEEDED] * 2
                or process.poll() is not None
            ),
            120,
            "the worker to deliver both events",
        )
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == 0, err
    assert b"received SIGTERM" in err
    assert len(receiver.processed_ids()) == 2


def _webhooks(engine: Engine, *args: str) -> Any:
    url = engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(app, ["webhooks", *args, "--database-url", url])


def test_endpoint_management_commands(engine: Engine) -> None:
    merchant = "0x" + "ab" * 20
    added = _webhooks(engine, "add", "--merchant", merchant, "--url", "https://crm.example/hook")
    assert added.exit_code == 0, added.stderr
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and "the secret is shown only now" in added.stderr
    endpoint_id = added.stderr.split()[1]
    listed = _webhooks(engine, "list", "--merchant", merchant).stdout.rstrip("\n").split("\t")
    assert listed[0] == endpoint_id and listed[1].lower() == merchant
    assert listed[2:] == ["https://crm.example/hook", "enabled", "final", "*"]
    assert secret not in "\t".join(listed)

    rotated = _webhooks(engine, "rotate", endpoint_id, "--grace", "0")
    assert rotated.exit_code == 0 and rotated.stdout.strip() not in ("", secret)
    assert _webhooks(engine, "disable", endpoint_id).stdout.strip() == f"disabled {endpoint_id}"
    assert "\tdisabled\t" in _webhooks(engine, "list").stdout
    assert _webhooks(engine, "enable", endpoint_id).stdout.strip() == f"enabled {endpoint_id}"
    assert _webhooks(engine, "deliveries").stdout == ""

    # Failures: exit 2 with the reason, and nothing written.
    bad_url = _webhooks(engine, "add", "--merchant", merchant, "--url", "ftp://crm.example/")
    assert bad_url.exit_code == 2 and bad_url.stderr.startswith("error: ")
    bad_merchant = _webhooks(engine, "add", "--merchant", "nobody", "--url", "https://x.example/")
    assert bad_merchant.exit_code == 2 and "nobody" in bad_merchant.stderr
    for command in ("rotate", "disable", "delete"):
        missing = _webhooks(engine, command, "we_missing")
        assert missing.exit_code == 2 and "we_missing" in missing.stderr, command
    replay = _webhooks(engine, "replay", "whd_missing")
    assert replay.exit_code == 2 and "whd_missing" in replay.stderr
    with engine.connect() as conn:
        assert [e.public_id for e in endpoints.list_endpoints(conn, None)] == [endpoint_id]

    assert _webhooks(engine, "delete", endpoint_id).stdout.strip() == f"deleted {endpoint_id}"
    assert _webhooks(engine, "list").stdout == ""
    assert _webhooks(engine, "delete", endpoint_id).exit_code == 2
