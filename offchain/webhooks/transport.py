"""The HTTP transport of webhook deliveries: it connects only to the public addresses it
has just checked. A check before the request is not enough — the request resolves the name
again, and a name that answers a public address to the check and a private one to the
connection (DNS rebinding) would make the gateway call its own network."""

from __future__ import annotations

from collections.abc import Iterable

import httpcore
import httpx

from offchain.webhooks.endpoints import (
    first_non_public,
    private_target_error,
    private_targets_allowed,
    resolve,
)

# httpx's own defaults.
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


class _PublicOnlyBackend(httpcore.SyncBackend):
    """Resolves the host once, refuses it if any of its addresses is not public, and
    connects to those very addresses (TLS still verifies the certificate for the name)."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if private_targets_allowed():
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            addresses = resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        refused = first_non_public(addresses)
        if refused is not None:
            raise httpcore.ConnectError(private_target_error(f"{host}:{port}", host, refused))
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # the next address may answer, as socket.create_connection does
        assert failure is not None  # getaddrinfo returns at least one address or raises
        raise failure


class PublicOnlyTransport(httpx.HTTPTransport):
    """httpx's transport, its connections made by the backend above."""

    def __init__(self, limits: httpx.Limits = _LIMITS) -> None:
        super().__init__(limits=limits)
        # HTTPTransport takes no network backend; its pool does, so the pool is made again
        # as HTTPTransport makes it, with ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PublicOnlyBackend(),
        )
