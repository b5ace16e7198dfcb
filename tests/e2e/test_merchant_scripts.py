"""A merchant and a customer use chainbill with the Ape scripts alone, as the README shows:
deploy, create a plan, subscribe, charge, issue an invoice and pay it — each script a
separate process against one long-running Anvil, the way `make run` serves it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

ROOT = Path(__file__).resolve().parents[2]
MERCHANT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # TEST::1
CUSTOMER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # TEST::2
ERC20_BALANCE_ABI = [
    {
        "name": "balanceOf",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def rpc_url() -> Iterator[str]:
    anvil = shutil.which("anvil")
    assert anvil, "anvil is not on PATH: run `make setup`"
    port = free_port()
    process = subprocess.Popen(
        [anvil, "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    web3 = Web3(Web3.HTTPProvider(url))
    for _ in range(100):
        if web3.is_connected():
            break
        time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class Scripts:
    def __init__(self, rpc_url: str, manifest: Path) -> None:
        self.manifest = manifest
        self.env = {
            **os.environ,
            "APE_FOUNDRY_HOST": rpc_url,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }

    def run(self, script: str, *args: str, expect_ok: bool = True) -> str:
        command = [
            str(Path(sys.executable).parent / "ape"),
            "run",
            script,
            "--network",
            "ethereum:local:foundry",
            *args,
            "--manifest",
            str(self.manifest),
        ]
        result = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180
        )
        output = result.stdout + result.stderr
        assert (result.returncode == 0) == expect_ok, output
        return output


def test_merchant_and_customer_flow_with_scripts_alone(rpc_url: str, tmp_path: Path) -> None:
    scripts = Scripts(rpc_url, tmp_path / "local.json")
    web3 = Web3(Web3.HTTPProvider(rpc_url))

    out = scripts.run("deploy", "--account", "TEST::0")
    manifest = json.loads(scripts.manifest.read_text())
    assert manifest["chain_id"] == 31337
    for name in ("SubscriptionManager", "InvoiceRegistry", "MockStablecoin"):
        assert len(web3.eth.get_code(manifest["contracts"][name]["address"])) > 2, out
    token = web3.eth.contract(
        address=manifest["contracts"]["MockStablecoin"]["address"], abi=ERC20_BALANCE_ABI
    )
    merchant_start = token.functions.balanceOf(MERCHANT).call()

    out = scripts.run("create_plan", "--account", "TEST::1", "--price", "9.99", "--period", "30d")
    assert "plan 1: 9.990000 TUSD every 2592000 s" in out

    out = scripts.run("subscribe", "--account", "TEST::2", "--plan", "1", "--periods", "12")
    assert "subscription 1 to plan 1: charged 9.990000 TUSD" in out

    out = scripts.run("charge", "--account", "TEST::4", "--id", "1")
    assert "subscription 1: skipped (not due)" in out

    out = scripts.run("charge", "--account", "TEST::4", "--all-due", "--advance", "30d")
    assert "subscription 1: charged 9990000 base units" in out

    out = scripts.run(
        "issue_invoice",
        "--account",
        "TEST::1",
        "--number",
        "INV-2026-0001",
        "--amount",
        "250.00",
        "--customer",
        CUSTOMER,
    )
    assert "issued INV-2026-0001: 250000000 base units" in out

    out = scripts.run(
        "pay_invoice", "--account", "TEST::2", "--merchant", MERCHANT, "--number", "INV-2026-0001"
    )
    assert "paid 250.000000 TUSD" in out
    assert "invoice INV-2026-0001: paid, 0 base units left" in out

    # Two periods of 9.99 and the invoice, to the base unit.
    assert (
        token.functions.balanceOf(MERCHANT).call() - merchant_start == 2 * 9_990_000 + 250_000_000
    )


def test_scripts_name_the_fix_for_bad_input(rpc_url: str, tmp_path: Path) -> None:
    scripts = Scripts(rpc_url, tmp_path / "missing.json")
    out = scripts.run("create_plan", "--account", "TEST::1", "--price", "1", expect_ok=False)
    assert "no deployment manifest" in out
    assert "make run" in out

    scripts = Scripts(rpc_url, tmp_path / "local.json")
    scripts.run("deploy", "--account", "TEST::0")
    out = scripts.run(
        "create_plan", "--account", "TEST::1", "--price", "9.9999999", expect_ok=False
    )
    assert "more than 6 decimal places" in out
    out = scripts.run(
        "create_plan", "--account", "TEST::1", "--price", "1", "--period", "soon", expect_ok=False
    )
    assert "is not a duration" in out
    out = scripts.run(
        "pay_invoice",
        "--account",
        "TEST::2",
        "--merchant",
        MERCHANT,
        "--number",
        "NOPE",
        expect_ok=False,
    )
    assert "has issued no invoice numbered 'NOPE'" in out


def test_metered_plan_and_usage_with_scripts(rpc_url: str, tmp_path: Path) -> None:
    scripts = Scripts(rpc_url, tmp_path / "local.json")
    scripts.run("deploy", "--account", "TEST::0")
    out = scripts.run(
        "create_plan",
        "--account",
        "TEST::1",
        "--price",
        "5",
        "--unit-price",
        "0.01",
        "--included-units",
        "100",
    )
    assert "5.000000 TUSD every 2592000 s, 0.010000 TUSD per unit above 100" in out
    scripts.run("subscribe", "--account", "TEST::2", "--plan", "1", "--cap", "20")

    out = scripts.run(
        "report_usage",
        "--account",
        "TEST::1",
        "--subscription",
        "1",
        "--units",
        "350",
        "--record",
        "r-1",
    )
    # 5.00 base + (350 - 100) x 0.01 = 7.50 at the next charge.
    assert "350 units unbilled; next charge 7.500000 TUSD" in out
    out = scripts.run(
        "report_usage",
        "--account",
        "TEST::1",
        "--subscription",
        "1",
        "--units",
        "350",
        "--record",
        "r-1",
        expect_ok=False,
    )
    assert "DuplicateUsageRecord" in out
