"""Who may see what, over every route of the app's OpenAPI schema.

Routes are enumerated from the app itself, so a route added later is covered without
editing this file, unless it has a path parameter this file does not know: then
`test_every_path_parameter_has_a_value` fails and names it (add it to `path_values`).
Which routes are merchant-only or customer-only is read from their dependencies
(`require_merchant` / `require_customer`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from api.deps import require_customer, require_merchant
from offchain import apikeys
from offchain.db import webhook_repository
from offchain.db.models import Invoice
from offchain.webhooks import endpoints as webhook_endpoints
from offchain.webhooks.outbox import ProduceResult, add_event
from tests.api.conftest import bearer
from tests.api.invoice_helpers import customer_session
from tests.offchain.indexer.helpers import Mirror

AUTH_ROUTES = "/v1/auth/"
PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # the template, e.g. /v1/invoices/{invoice_id}
    merchant_only: bool
    customer_only: bool

    @property
    def params(self) -> list[str]:
        return PARAM.findall(self.path)

    def url(self, values: dict[str, str]) -> str:
        return PARAM.sub(lambda m: values[m.group(1)], self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    for route in routes:
        included = getattr(route, "original_router", None)  # lazily included routers
        if included is not None:
            yield from _routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


def _calls(dependant: Any) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def operations(app: FastAPI) -> list[Operation]:
    """Every operation of the OpenAPI schema, with what its dependencies demand."""
    schema_paths = app.openapi()["paths"]
    found = []
    for route in _routes(app.router.routes):
        if route.path not in schema_paths:
            continue
        calls = set(_calls(route.dependant))
        for method in sorted(route.methods or ()):
            if method.lower() not in schema_paths[route.path]:
                continue
            found.append(
                Operation(
                    method,
                    route.path,
                    merchant_only=require_merchant in calls,
                    customer_only=require_customer in calls,
                )
            )
    assert {(o.method.lower(), o.path) for o in found} == {
        (method, path) for path, item in schema_paths.items() for method in item
    }, "every operation of the schema is enumerated"
    return found


@dataclass
class World:
    """Merchant A's objects (an invoice and a subscription of A's customer), A's key, and
    the credentials of everyone else."""

    client: TestClient
    invoice_id: str
    subscription_id: int
    customer: str
    merchant: str
    merchant_key: str  # A
    stranger_key: str  # merchant B
    customer_session: str  # A's customer
    stranger_session: str  # a customer with nothing to do with A
    revoked_key: str
    endpoint_id: str  # A's webhook endpoint
    delivery_id: str  # a delivery of an event of A's to it

    @property
    def app(self) -> FastAPI:
        app = self.client.app
        assert isinstance(app, FastAPI)
        return app

    def path_values(self) -> dict[str, str]:
        return {
            "invoice_id": self.invoice_id,
            "subscription_id": str(self.subscription_id),
            "address": self.customer,
            "token": self.app.state.gateway.public_token(self.invoice_id),
            "endpoint_id": self.endpoint_id,
            "delivery_id": self.delivery_id,
        }

    def secrets_of_a(self) -> list[str]:
        """What no one else may read in any answer."""
        return [self.invoice_id[2:], self.customer[2:], self.endpoint_id, self.delivery_id]


@pytest.fixture
def world(
    client: TestClient,
    engine: Engine,
    mirror: Mirror,
    merchant: Any,
    customer: Any,
    stranger: Any,
    payer: Any,
    merchant_key: str,
    stranger_key: str,
    issue: Callable[..., bytes],
    create_plan: Callable[..., int],
    subscribe: Callable[..., int],
    chain: Any,
) -> World:
    issue()
    subscription_id = subscribe(create_plan())
    mirror.sync()
    with engine.begin() as conn:
        invoice_id = conn.execute(select(Invoice.invoice_id)).scalar_one()
        revoked = apikeys.create_key(conn, merchant.address, "revoked")
        apikeys.revoke_key(conn, revoked.prefix)
        endpoint = webhook_endpoints.create_endpoint(
            conn, merchant.address, "https://a.example.com/hooks"
        ).endpoint
        add_event(
            conn,
            [endpoint],
            dedupe_key="auth-matrix",
            merchant=endpoint.merchant,
            event_type="invoice.issued",
            final=True,
            data={"invoice_id": invoice_id},
            source=None,
            now=datetime.now(UTC),
            result=ProduceResult(),
        )
        [delivery] = webhook_repository.list_deliveries(conn, endpoint.merchant)
    return World(
        client=client,
        invoice_id=invoice_id,
        subscription_id=subscription_id,
        customer=customer.address.lower(),
        merchant=merchant.address.lower(),
        merchant_key=merchant_key,
        stranger_key=stranger_key,
        customer_session=customer_session(engine, customer.address, chain.chain_id),
        stranger_session=customer_session(engine, payer.address, chain.chain_id),
        revoked_key=revoked.key,
        endpoint_id=endpoint.public_id,
        delivery_id=delivery.public_id,
    )


def v1_operations(app: FastAPI) -> list[Operation]:
    return [o for o in operations(app) if o.path.startswith("/v1/") and AUTH_ROUTES not in o.path]


def call(world: World, op: Operation, token: str | None, **values: str) -> Any:
    url = op.url({**world.path_values(), **values})
    headers = bearer(token) if token else {}
    if op.method == "POST":
        return world.client.post(url, headers=headers, json={})
    return world.client.request(op.method, url, headers=headers)


def test_every_path_parameter_has_a_value(world: World) -> None:
    unknown = {
        f"{op}: {{{name}}}"
        for op in operations(world.app)
        for name in op.params
        if name not in world.path_values()
    }
    assert not unknown, f"add these path parameters to World.path_values: {sorted(unknown)}"


def test_the_schema_has_the_gateway_routes(world: World) -> None:
    ops = {str(o) for o in v1_operations(world.app)}
    assert "GET /v1/invoices/{invoice_id}" in ops
    assert "POST /v1/invoices" in ops


def test_anonymous_and_bad_credentials_are_refused_everywhere_under_v1(world: World) -> None:
    bad_tokens = [
        None,
        "garbage",
        "cbk_",
        "cbk_000000000000_" + "A" * 43,
        world.revoked_key,
        "cbs_" + "A" * 43,
        world.merchant_key + "x",
    ]
    failures = []
    for op in v1_operations(world.app):
        for token in bad_tokens:
            response = call(world, op, token)
            if response.status_code != 401 or response.json()["error"]["code"] != (
                "unauthenticated"
            ):
                failures.append(f"{op} with {token!r}: {response.status_code}")
            elif "www-authenticate" not in response.headers:
                failures.append(f"{op}: 401 without WWW-Authenticate")
    assert not failures, failures


def test_merchant_only_routes_refuse_customer_sessions(world: World) -> None:
    ops = [o for o in v1_operations(world.app) if o.merchant_only]
    assert ops, "some routes are merchant-only (analytics, invoice creation)"
    failures = [
        f"{op}: {status}"
        for op in ops
        if (status := call(world, op, world.customer_session).status_code) != 403
    ]
    assert not failures, failures


def test_customer_only_routes_refuse_merchant_keys(world: World) -> None:
    ops = [o for o in operations(world.app) if o.customer_only]
    assert "POST /v1/auth/logout" in {str(o) for o in ops}
    failures = [
        f"{op}: {status}"
        for op in ops
        if (status := call(world, op, world.merchant_key).status_code) != 403
    ]
    assert not failures, failures


def _readable(op: Operation) -> bool:
    return op.method == "GET"


def test_the_owner_can_read_what_the_others_cannot(world: World) -> None:
    """Every GET under /v1 with A's objects in its path answers A (the control), and
    answers merchant B and a stranger customer 404 (or 403 when the route is not for
    their kind); list routes answer them without any of A's objects."""
    failures = []
    for op in filter(_readable, v1_operations(world.app)):
        owner_token = world.customer_session if op.customer_only else world.merchant_key
        owner = call(world, op, owner_token)
        if op.params and owner.status_code != 200:
            failures.append(f"{op}: the owner got {owner.status_code} {owner.text[:200]}")
        for who, token in (
            ("merchant B", world.stranger_key),
            ("stranger", world.stranger_session),
        ):
            response = call(world, op, token)
            not_for_kind = (op.merchant_only and who == "stranger") or (
                op.customer_only and who == "merchant B"
            )
            if not_for_kind:
                if response.status_code != 403:
                    failures.append(f"{op} as {who}: {response.status_code}, expected 403")
                continue
            if op.params:
                # 404; or, for a route named by a party rather than an object (a customer's
                # statement), an answer holding none of A's objects.
                named_by_party = op.params == ["address"]
                shows_invoice = world.invoice_id[2:] in response.text.lower()
                if response.status_code != 404 and not (
                    named_by_party and response.status_code == 200 and not shows_invoice
                ):
                    failures.append(f"{op} as {who}: {response.status_code}, expected 404")
            elif response.status_code == 200:
                leaked = [s for s in world.secrets_of_a() if s in response.text.lower()]
                if leaked:
                    failures.append(f"{op} as {who}: shows A's {leaked}")
            elif response.status_code != 422:  # e.g. a required filter: not a leak
                failures.append(f"{op} as {who}: {response.status_code} {response.text[:200]}")
    assert not failures, failures


def test_a_customer_sees_own_invoice_but_not_through_another_merchant(world: World) -> None:
    url = f"/v1/invoices/{world.invoice_id}"
    assert world.client.get(url, headers=bearer(world.customer_session)).status_code == 200
    assert world.client.get(url, headers=bearer(world.stranger_session)).status_code == 404


def test_unknown_ids_are_404_not_500(world: World) -> None:
    unknown = {
        "invoice_id": "0x" + "ab" * 32,
        "subscription_id": "999999",
        "address": "0x" + "1" * 40,
        "endpoint_id": "we_" + "0" * 24,
        "delivery_id": "whd_" + "0" * 24,
    }
    failures = []
    for op in filter(_readable, v1_operations(world.app)):
        if not op.params or op.customer_only:
            continue
        status = call(world, op, world.merchant_key, **unknown).status_code
        if status not in (404, 200):  # a statement of an unknown customer may be empty
            failures.append(f"{op}: {status}")
    assert not failures, failures


def public_operations(app: FastAPI) -> list[Operation]:
    return [o for o in operations(app) if o.path.startswith("/pay/")]


def test_public_pages_need_the_right_token(world: World, chain: Any) -> None:
    ops = public_operations(world.app)
    assert ops, "the public invoice pages are in the schema"
    right = world.path_values()["token"]
    wrong = "0" * 32 if right != "0" * 32 else "1" * 32
    other_invoice = world.app.state.gateway.public_token("0x" + "ab" * 32)
    failures = []
    body = {"payer": world.customer}
    for op in ops:
        for token in (wrong, right.upper().replace("A", "B"), other_invoice, ""):
            if token == right:
                continue
            url = op.url({**world.path_values(), "token": token})
            response = world.client.request(
                op.method, url, json=body if op.method == "POST" else None
            )
            if response.status_code not in (404, 405) or (
                token == "" and response.status_code >= 500
            ):
                failures.append(f"{op} with token {token!r}: {response.status_code}")
        if op.method == "GET":
            response = world.client.get(op.url(world.path_values()))
            if response.status_code != 200:
                failures.append(f"{op} with the right token: {response.status_code}")
    assert not failures, failures
