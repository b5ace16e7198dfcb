"""A merchant's webhook receiver, for tests: a real HTTP server on loopback that verifies
every signature with `offchain.webhooks.signing.verify` (as a receiver would), processes
each event id once (delivery is at least once), and can be taken down (connections
refused, or 500 answers) and brought back up on the same port."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from offchain.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, SignatureError, verify


class Mode(StrEnum):
    UP = "up"
    ERROR = "error"  # answers 500 to everything
    REFUSE = "refuse"  # the port is closed: connections are refused


@dataclass
class Received:
    """What reached the receiver."""

    processed: dict[str, dict[str, Any]] = field(default_factory=dict)  # event id -> event
    duplicates: list[str] = field(default_factory=list)  # ids seen again after processing
    bad_signatures: int = 0
    refused_while_down: int = 0  # requests answered 500 in ERROR mode
    header_mismatches: int = 0  # Chainbill-Event-Id not the body's id


class Receiver:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets: list[str] = list(secrets or [])
        self.received = Received()
        self.lock = threading.Lock()
        self.mode = Mode.UP
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.handle(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            if self.mode is Mode.ERROR:
                self.received.refused_while_down += 1
                return 500
            header = headers.get(SIGNATURE_HEADER)
            verified = False
            for secret in self.secrets:
                try:
                    verify(header, body, secret)
                    verified = True
                    break
                except SignatureError:
                    continue
            if not verified:
                self.received.bad_signatures += 1
                return 400
            event = json.loads(body)
            if headers.get(EVENT_ID_HEADER) != event["id"]:
                self.received.header_mismatches += 1
            if event["id"] in self.received.processed:
                self.received.duplicates.append(event["id"])  # acknowledged, not redone
            else:
                self.received.processed[event["id"]] = event
            return 200

    def _start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def down(self, mode: Mode) -> None:
        if mode is Mode.REFUSE:
            self._stop()
        with self.lock:
            self.mode = mode

    def up(self) -> None:
        with self.lock:
            self.mode = Mode.UP
        if self._server is None:
            self._start()  # same port: allow_reuse_address is set by HTTPServer

    def processed_ids(self) -> set[str]:
        with self.lock:
            return set(self.received.processed)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
