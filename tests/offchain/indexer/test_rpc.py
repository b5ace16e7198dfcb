"""The RPC client's failure paths, and the indexer's answer to providers that refuse large
`eth_getLogs` ranges. Backoff is observed through an injected `sleep`: nothing sleeps."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from offchain.indexer import rpc as rpc_module
from offchain.indexer.indexer import Indexer
from offchain.indexer.rpc import (
    NodeUnavailable,
    RangeTooLarge,
    RpcClient,
    RpcError,
    TooManyLogs,
)
from tests.chain_fixtures import GRACE, PERIOD, PRICE
from tests.offchain.indexer.helpers import CHAINBILL, Mirror, RpcProxy, assert_same_mirror


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _Scripted:
    """An HTTP server answering each request with the next of `answers` ((status, body));
    after the last, it forwards to `upstream`."""

    def __init__(self, answers: list[tuple[int, dict[str, Any] | None]], upstream: str) -> None:
        self.answers = list(answers)
        self.requests = 0
        proxy = RpcProxy(upstream)
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                scripted.requests += 1
                if scripted.answers:
                    status, payload = scripted.answers.pop(0)
                    if payload is not None:
                        payload = {**payload, "id": json.loads(body)["id"]}
                    answer = json.dumps(payload).encode()
                else:
                    status, answer = 200, proxy.handle(body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted(rpc_url: str) -> Iterator[Any]:
    servers: list[_Scripted] = []

    def make(answers: list[tuple[int, dict[str, Any] | None]]) -> _Scripted:
        server = _Scripted(answers, rpc_url)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


# ------------------------------------------------------------------------ the client


def test_unreachable_node_raises_node_unavailable_naming_the_url() -> None:
    url = _closed_port_url()
    delays: list[float] = []
    client = RpcClient(url, retries=3, backoff=0.2, sleep=delays.append)
    with pytest.raises(NodeUnavailable) as raised:
        client.block_number()
    message = str(raised.value)
    assert url in message
    assert "eth_blockNumber" in message and "4 attempts" in message
    assert delays == pytest.approx([0.2, 0.4, 0.8])


def test_backoff_doubles_up_to_ten_seconds() -> None:
    delays: list[float] = []
    client = RpcClient(_closed_port_url(), retries=7, backoff=1.5, sleep=delays.append)
    with pytest.raises(NodeUnavailable):
        client.headers([1, 2])
    assert delays == pytest.approx([1.5, 3.0, 6.0, 10.0, 10.0, 10.0, 10.0])


def test_no_retries_means_one_attempt() -> None:
    delays: list[float] = []
    with pytest.raises(NodeUnavailable, match="after 1 attempts"):
        RpcClient(_closed_port_url(), retries=0, sleep=delays.append).chain_id()
    assert delays == []


def test_overloaded_node_is_retried_until_it_answers(scripted: Any, chain: Any) -> None:
    server = scripted([(503, None), (429, None), (502, None)])
    delays: list[float] = []
    client = RpcClient(server.url, retries=5, backoff=0.1, sleep=delays.append)
    assert client.chain_id() == chain.chain_id
    assert server.requests == 4
    assert delays == pytest.approx([0.1, 0.2, 0.4])


def test_overloaded_node_gives_up_after_the_retries(scripted: Any) -> None:
    server = scripted([(503, None)] * 10)
    delays: list[float] = []
    client = RpcClient(server.url, retries=2, backoff=0.5, sleep=delays.append)
    with pytest.raises(NodeUnavailable, match="HTTP 503") as raised:
        client.block_number()
    assert server.url in str(raised.value)
    assert server.requests == 3
    assert delays == pytest.approx([0.5, 1.0])


def test_json_rpc_errors_are_not_retried(scripted: Any) -> None:
    error = {"jsonrpc": "2.0", "error": {"code": -32000, "message": "header not found"}}
    server = scripted([(200, error)])
    delays: list[float] = []
    client = RpcClient(server.url, sleep=delays.append)
    with pytest.raises(RpcError) as raised:
        client.block_number()
    assert not isinstance(raised.value, RangeTooLarge)
    assert (raised.value.code, raised.value.message) == (-32000, "header not found")
    assert server.requests == 1 and delays == []


@pytest.mark.parametrize(
    "message",
    [
        "query returned more than 10000 results",
        "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range",
        "exceed maximum block range: 5000",
    ],
)
def test_range_refusals_are_recognised_for_get_logs_only(scripted: Any, message: str) -> None:
    error = {"jsonrpc": "2.0", "error": {"code": -32005, "message": message}}
    server = scripted([(200, error), (200, error)])
    client = RpcClient(server.url)
    with pytest.raises(RangeTooLarge):
        client.get_logs([], [], 0, 10)
    with pytest.raises(RpcError) as raised:
        client.block_number()
    assert not isinstance(raised.value, RangeTooLarge)


def _fake_log(n: int) -> dict[str, Any]:
    return {
        "address": "0x" + "11" * 20,
        "topics": [],
        "data": "0x" + "00" * 512,
        "blockNumber": hex(n // 10),
        "logIndex": hex(n % 10),
        "removed": False,
    }


def test_an_answer_with_too_many_logs_is_abandoned_before_it_is_read(scripted: Any) -> None:
    """eth_getLogs with max_logs: an answer over the limit raises TooManyLogs with an
    estimate of its size (from Content-Length) instead of being held in memory; one within
    the limit comes back whole, and the client keeps working after an abandoned answer."""
    big = {"jsonrpc": "2.0", "result": [_fake_log(n) for n in range(2_000)]}
    small = {"jsonrpc": "2.0", "result": [_fake_log(n) for n in range(7)]}
    server = scripted([(200, big), (200, small), (200, big)])
    client = RpcClient(server.url)
    with pytest.raises(TooManyLogs) as raised:
        client.get_logs([], [], 0, 100, max_logs=10)
    assert 1_500 <= raised.value.logs <= 2_500  # estimated from the share read
    assert len(client.get_logs([], [], 0, 100, max_logs=10)) == 7
    assert len(client.get_logs([], [], 0, 100)) == 2_000  # no limit: read whole
    assert client.chain_id() > 0  # forwarded to the node: the session still works


def test_an_abandoned_answer_is_not_kept_alive_by_the_error(scripted: Any) -> None:
    """What was read of an answer over the limit is freed when it is abandoned, not kept by
    the error's traceback for as long as the error is (the indexer keeps it until it reads
    the range again, smaller)."""
    big = {"jsonrpc": "2.0", "result": [_fake_log(n) for n in range(20_000)]}  # ~22 MB
    client = RpcClient(scripted([(200, big)]).url)
    tracemalloc.start(64)
    try:
        with pytest.raises(TooManyLogs) as raised:
            client.get_logs([], [], 0, 100, max_logs=15_000)
        kept = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, rpc_module.__file__, all_frames=True)]
        )
    finally:
        tracemalloc.stop()
    assert raised.value.logs > 15_000  # it was read up to the limit (about 16 MB)...
    retained = sum(stat.size for stat in kept.statistics("filename"))
    assert retained < 1_000_000  # ...and none of it is left while the error is held


def test_unknown_blocks_are_an_error(rpc_url: str, chain: Any) -> None:
    client = RpcClient(rpc_url)
    with pytest.raises(RpcError, match="not known"):
        client.headers([0, chain.blocks.height + 1_000])


def test_indexer_refuses_a_node_of_another_chain(mirror: Mirror) -> None:
    with pytest.raises(ValueError, match=mirror.rpc_url):
        mirror.indexer(chain_id=mirror.chain_id + 1)


def test_cli_exits_3_naming_the_url_when_the_node_is_down(
    tmp_path: Path, database_url: str, mirror: Mirror
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the database plays no part; once is enough")
    manifest = tmp_path / "manifest.json"
    mirror.manifest.write(manifest)
    url = _closed_port_url()
    result = subprocess.run(
        [
            str(CHAINBILL), "index", "--database-url", database_url, "--rpc-url", url,
            "--manifest", str(manifest), "--quiet", "--no-follow",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert url in " ".join(result.stderr.split())


# --------------------------------------------------------------- range refusals


def _activity(subscriptions: Any, token: Any, merchant: Any, customer: Any, chain: Any) -> None:
    plan = int(
        subscriptions.createPlan(token, PRICE, PERIOD, 0, GRACE, sender=merchant).return_value
    )
    token.approve(subscriptions, 100 * PRICE, sender=customer)
    for _ in range(6):
        subscriptions.subscribe(plan, PRICE, sender=customer)
    chain.mine(20)
    subscriptions.chargeBatch([1, 2, 3, 99], sender=customer)


def test_indexer_halves_the_range_until_the_node_accepts_it(
    mirror: Mirror,
    other_engine: Engine,
    subscriptions: Any,
    token: Any,
    merchant: Any,
    customer: Any,
    chain: Any,
) -> None:
    _activity(subscriptions, token, merchant, customer, chain)
    with RpcProxy(mirror.rpc_url, max_log_range=5) as proxy:
        indexer = Indexer(mirror.engine, RpcClient(proxy.url), mirror.config(initial_range=64))
        results = []
        while (result := indexer.sync_once()) is not None:
            results.append(result)
    spans = proxy.log.get_logs_spans
    head = chain.blocks.height
    assert spans[:5] == [min(64, head + 1), 32, 16, 8, 4]  # halved until accepted
    assert max(s for s in spans if s not in proxy.log.refused_spans) <= 5
    assert all(s > 5 for s in proxy.log.refused_spans)
    # Every range read was accepted once, back to back from the start to the head.
    assert results[0].first_block == 0 and results[-1].last_block == head
    assert all(a.last_block + 1 == b.first_block for a, b in itertools.pairwise(results))
    mirror.with_engine(other_engine).sync()
    assert_same_mirror(mirror.engine, other_engine)
    assert mirror.reconcile() == []


def test_a_node_refusing_even_one_block_stops_the_indexer(mirror: Mirror) -> None:
    with RpcProxy(mirror.rpc_url, max_log_range=0) as proxy:
        indexer = Indexer(mirror.engine, RpcClient(proxy.url), mirror.config(initial_range=4))
        with pytest.raises(RangeTooLarge):
            indexer.sync_once()
    assert proxy.log.get_logs_spans == [4, 2, 1]
    assert mirror.state() is None
