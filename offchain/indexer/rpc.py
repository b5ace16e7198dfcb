"""A lean JSON-RPC client for the indexer's hot path.

`eth_getLogs` answers are large; web3.py's provider parses them with the standard library
and wraps every log in attribute dicts, which costs most of the indexer's time. This client
keeps one HTTP session, parses with orjson and hands back plain dicts. It retries transient
failures with exponential backoff and names the URL when the node cannot be reached.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import requests

log = logging.getLogger(__name__)

# Headers asked for in one HTTP request at most: nodes and providers cap batch sizes, and a
# bounded request keeps each answer small.
HEADERS_PER_REQUEST = 1_000

# Messages providers use when a getLogs range holds too much; the indexer halves the range.
_RANGE_TOO_LARGE_MARKERS = (
    "query returned more than",
    "too many results",
    "block range",
    "range is too large",
    "exceed maximum block range",
    "limit exceeded",
    "response size exceeded",
    "log response size exceeded",
)


class RpcError(RuntimeError):
    """The node answered with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: error {code}: {message}")
        self.method = method
        self.code = code
        self.message = message


class RangeTooLarge(RpcError):
    """The node refused a getLogs range as too large or too full."""


class TooManyLogs(RuntimeError):
    """An `eth_getLogs` answer holds more logs than the caller can take: it was not read to
    the end (the memory it would take is the point). `logs` estimates how many it holds."""

    def __init__(self, logs: int) -> None:
        super().__init__(f"more than {logs} logs")
        self.logs = logs


# Each log of an eth_getLogs answer has exactly one.
_LOG_MARKER = b'"logIndex"'
_CHUNK_BYTES = 1 << 16


class NodeUnavailable(RuntimeError):
    """The node could not be reached after every retry."""


class RpcClient:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep
        self._session = requests.Session()
        self._session.headers["Content-Type"] = "application/json"
        self._ids = itertools.count(1)

    def clone(self) -> RpcClient:
        """A client of the same node with the same settings and a session of its own: a
        `requests.Session` is not thread-safe, so each thread talks through its own."""
        return RpcClient(
            self.url,
            timeout=self._timeout,
            retries=self._retries,
            backoff=self._backoff,
            sleep=self._sleep,
        )

    def close(self) -> None:
        self._session.close()

    def _post(self, payload: Any, what: str, max_logs: int | None = None) -> Any:
        body = orjson.dumps(payload)
        delay = self._backoff
        for attempt in range(self._retries + 1):
            try:
                response = self._session.post(
                    self.url, data=body, timeout=self._timeout, stream=max_logs is not None
                )
                if response.status_code in (429, 502, 503, 504):
                    raise requests.ConnectionError(f"HTTP {response.status_code}")
                response.raise_for_status()
                if max_logs is not None:
                    return orjson.loads(_read_bounded(response, max_logs))
                return orjson.loads(response.content)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self._retries:
                    raise NodeUnavailable(
                        f"the node at {self.url} did not answer {what} after {self._retries + 1} "
                        f"attempts ({exc}); is it running? (set RPC_URL to another node)"
                    ) from exc
                log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
                self._sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    def call(self, method: str, params: Sequence[Any]) -> Any:
        answer = self._post(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)},
            method,
        )
        return self._result(method, answer)

    def batch(self, method: str, params_list: Sequence[Sequence[Any]]) -> list[Any]:
        """Several calls of one method in one HTTP request, results in order."""
        if not params_list:
            return []
        first = next(self._ids)
        payload = [
            {"jsonrpc": "2.0", "id": first + n, "method": method, "params": list(params)}
            for n, params in enumerate(params_list)
        ]
        self._ids = itertools.count(first + len(payload))
        answers = self._post(payload, f"{len(payload)} x {method}")
        if not isinstance(answers, list):
            return [self._result(method, answers)]
        by_id = {a["id"]: a for a in answers}
        return [self._result(method, by_id[first + n]) for n in range(len(payload))]

    @staticmethod
    def _result(method: str, answer: dict[str, Any]) -> Any:
        error = answer.get("error")
        if error:
            message = str(error.get("message", ""))
            code = int(error.get("code", 0))
            if method == "eth_getLogs" and any(
                m in message.lower() for m in _RANGE_TOO_LARGE_MARKERS
            ):
                raise RangeTooLarge(method, code, message)
            raise RpcError(method, code, message)
        return answer["result"]

    # ---------------------------------------------------------------- helpers

    def chain_id(self) -> int:
        return int(self.call("eth_chainId", []), 16)

    def block_number(self) -> int:
        return int(self.call("eth_blockNumber", []), 16)

    def headers(self, numbers: Sequence[int]) -> list[dict[str, Any]]:
        """Block headers (no transactions) for `numbers`, in order, at most
        `HEADERS_PER_REQUEST` to an HTTP request."""
        blocks: list[Any] = []
        for start in range(0, len(numbers), HEADERS_PER_REQUEST):
            chunk = numbers[start : start + HEADERS_PER_REQUEST]
            blocks += self.batch("eth_getBlockByNumber", [[hex(n), False] for n in chunk])
        missing = [n for n, b in zip(numbers, blocks, strict=True) if b is None]
        if missing:
            raise RpcError("eth_getBlockByNumber", 0, f"blocks {missing} are not known to the node")
        return blocks

    def get_logs(
        self,
        addresses: Sequence[str],
        topics: Sequence[str],
        from_block: int,
        to_block: int,
        *,
        max_logs: int | None = None,
    ) -> list[dict[str, Any]]:
        """The logs of blocks from_block..to_block. With `max_logs`, an answer holding more
        is abandoned as soon as that shows, before it is all in memory: TooManyLogs."""
        params = {
            "address": list(addresses),
            "topics": [list(topics)],
            "fromBlock": hex(from_block),
            "toBlock": hex(to_block),
        }
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": "eth_getLogs"}
        answer = self._post({**payload, "params": [params]}, "eth_getLogs", max_logs)
        return list(self._result("eth_getLogs", answer))


def _read_bounded(response: requests.Response, max_logs: int) -> bytes:
    """The body of an eth_getLogs answer, unless it holds more than `max_logs` logs: then
    the connection is dropped as soon as the count passes it (the node may have built a
    huge answer; this process never holds it) and TooManyLogs estimates the total from
    the share read (by Content-Length, when the node sends one)."""
    chunks: list[bytes] = []
    read = logs = 0
    carry = b""  # the end of the last chunk: a marker may straddle two chunks
    try:
        for chunk in response.iter_content(_CHUNK_BYTES):
            logs += (carry + chunk).count(_LOG_MARKER)
            carry = chunk[-(len(_LOG_MARKER) - 1) :]
            read += len(chunk)
            if logs > max_logs:
                total = int(response.headers.get("Content-Length") or 0)
                # The error's traceback keeps this frame, and so what was read, alive for
                # as long as the error is kept (the indexer holds it until the range is
                # read again, smaller): up to 1.5 ranges' worth of bytes, for nothing.
                chunks.clear()
                raise TooManyLogs(logs * total // read if total > read else logs)
            chunks.append(chunk)
    finally:
        response.close()
    return b"".join(chunks)
