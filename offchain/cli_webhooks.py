"""`chainbill webhooks add|list|rotate|disable|enable|delete|deliveries|replay|seal-secrets|run`:
merchants' webhook endpoints, the delivery log, sealing their secrets at rest, and the worker
that produces and delivers events."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from offchain.cli_support import DatabaseOption, fail, open_mirror
from offchain.config import Settings
from offchain.db import webhook_repository
from offchain.db.engine import make_engine, upgrade_schema
from offchain.db.models import WebhookDeliveryStatus
from offchain.manifest import Manifest, ManifestError
from offchain.webhooks import endpoints
from offchain.webhooks.delivery import Deliverer, DeliveryPolicy, Worker
from offchain.webhooks.reminders import ReminderConfig, parse_days
from offchain.webhooks.sealing import SECRETS_KEY_ENV, SealingError, check_key, reseal

webhooks_app = typer.Typer(
    help="Outgoing webhooks: merchants' endpoints, deliveries, and the worker.",
    no_args_is_help=True,
)
_ENV = Settings.from_env()
_REFUSALS = (endpoints.WebhookError, SealingError)


@webhooks_app.command("add")
def add(
    merchant: Annotated[str, typer.Option(help="The merchant address the endpoint is for.")],
    url: Annotated[str, typer.Option(help="Where events are POSTed (http or https).")],
    description: Annotated[str, typer.Option(help="What the endpoint is (e.g. 'CRM').")] = "",
    event_type: Annotated[
        list[str] | None,
        typer.Option("--event-type", help="Only these event types (repeat); default: all."),
    ] = None,
    include_unconfirmed: Annotated[
        bool, typer.Option(help="Also send events of blocks not final yet (marked so).")
    ] = False,
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """Register an endpoint. Its signing secret is printed once: store it now."""
    with open_mirror(database_url, write=True, refusals=_REFUSALS) as conn:
        created = endpoints.create_endpoint(
            conn,
            merchant,
            url,
            description=description,
            event_types=event_type or None,
            include_unconfirmed=include_unconfirmed,
        )
    typer.echo(created.secret)
    typer.echo(
        f"endpoint {created.endpoint.public_id} for {created.endpoint.merchant} -> "
        f"{created.endpoint.url}; the secret is shown only now",
        err=True,
    )


@webhooks_app.command("list")
def list_endpoints(
    merchant: Annotated[str | None, typer.Option(help="Only this merchant's.")] = None,
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """List endpoints (id, merchant, URL, enabled, unconfirmed, event types); no secrets."""
    with open_mirror(database_url, write=False, refusals=_REFUSALS) as conn:
        found = endpoints.list_endpoints(conn, merchant)
    for e in found:
        types = ",".join(endpoints.event_types_of(e) or ["*"])
        typer.echo(
            f"{e.public_id}\t{e.merchant}\t{e.url}\t"
            f"{'enabled' if e.enabled else 'disabled'}\t"
            f"{'unconfirmed+final' if e.include_unconfirmed else 'final'}\t{types}"
        )


@webhooks_app.command("rotate")
def rotate(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (we_...).")],
    grace: Annotated[
        int, typer.Option(help="Seconds the old secret keeps signing too (0: none).")
    ] = endpoints.DEFAULT_ROTATION_GRACE_S,
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """A new signing secret, printed once; the old one also signs for `--grace` seconds."""
    with open_mirror(database_url, write=True, refusals=_REFUSALS) as conn:
        rotated = endpoints.rotate_secret(conn, endpoint_id, None, grace_s=grace)
    typer.echo(rotated.secret)
    typer.echo(f"rotated {endpoint_id}; the old secret signs too for {grace} s", err=True)


def _set_enabled(endpoint_id: str, enabled: bool, database_url: str) -> None:
    with open_mirror(database_url, write=True, refusals=_REFUSALS) as conn:
        endpoints.set_enabled(conn, endpoint_id, None, enabled)
    typer.echo(f"{'enabled' if enabled else 'disabled'} {endpoint_id}")


@webhooks_app.command("disable")
def disable(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (we_...).")],
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """Stop sending to an endpoint: no new events; queued deliveries wait until enabled."""
    _set_enabled(endpoint_id, False, database_url)


@webhooks_app.command("enable")
def enable(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (we_...).")],
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """Send to a disabled endpoint again."""
    _set_enabled(endpoint_id, True, database_url)


@webhooks_app.command("delete")
def delete(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (we_...).")],
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """Delete an endpoint: no new events; deliveries not made yet are canceled."""
    with open_mirror(database_url, write=True, refusals=_REFUSALS) as conn:
        endpoints.delete_endpoint(conn, endpoint_id, None)
    typer.echo(f"deleted {endpoint_id}")


@webhooks_app.command("deliveries")
def list_deliveries(
    merchant: Annotated[str | None, typer.Option(help="Only this merchant's.")] = None,
    status: Annotated[
        WebhookDeliveryStatus | None, typer.Option(help="Only deliveries in this state.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 50,
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """The delivery log, newest first: id, event, type, endpoint, status, attempts, last
    status code or error, next attempt."""
    with open_mirror(database_url, write=False, refusals=_REFUSALS) as conn:
        who = None if merchant is None else endpoints.normalize_merchant(merchant)
        rows = webhook_repository.list_deliveries(
            conn, who, status=None if status is None else status.value, limit=limit
        )
        events = webhook_repository.events_by_ids(conn, [d.event_id for d in rows])
        hooks = webhook_repository.endpoints_by_ids(conn, [d.endpoint_id for d in rows])
    for d in rows:
        event = events[d.event_id]
        last = d.last_error or (str(d.last_status_code) if d.last_status_code else "-")
        next_at = d.next_attempt_at.isoformat() if d.next_attempt_at else "-"
        typer.echo(
            f"{d.public_id}\t{event.event_id}\t{event.type}\t{hooks[d.endpoint_id].public_id}\t"
            f"{d.status}\t{d.attempts}\t{last}\t{next_at}"
        )


@webhooks_app.command("replay")
def replay(
    delivery_id: Annotated[str, typer.Argument(help="The delivery's id (whd_...).")],
    database_url: DatabaseOption = _ENV.database_url,
) -> None:
    """Send a failed delivery again (the worker picks it up at once)."""
    with open_mirror(database_url, write=True, refusals=_REFUSALS) as conn:
        endpoints.replay(conn, delivery_id, None)
    typer.echo(f"replaying {delivery_id}")


@webhooks_app.command("seal-secrets")
def seal_secrets(database_url: DatabaseOption = _ENV.database_url) -> None:
    """Seal every stored signing secret under the first key of CHAINBILL_WEBHOOK_SECRETS_KEY
    (clear ones, and ones sealed under an older key): after setting the key, or rotating it."""
    with open_mirror(database_url, write=True, refusals=_REFUSALS) as conn:
        if not check_key():
            raise SealingError(f"set {SECRETS_KEY_ENV} first: there is nothing to seal with")
        sealed = 0
        for endpoint in webhook_repository.all_endpoints(conn):
            values = {
                name: reseal(stored)
                for name in ("secret", "previous_secret")
                if (stored := getattr(endpoint, name)) is not None
            }
            webhook_repository.update_endpoint(conn, endpoint.id, values)
            sealed += len(values)
    typer.echo(f"sealed {sealed} secret(s) under the first key of {SECRETS_KEY_ENV}")


@webhooks_app.command("run")
def run(
    database_url: DatabaseOption = _ENV.database_url,
    manifest: Annotated[
        Path, typer.Option(envvar="CHAINBILL_MANIFEST", help="Deployment manifest.")
    ] = _ENV.manifest_path,
    once: Annotated[bool, typer.Option(help="One round (produce, deliver what is due).")] = False,
    poll_interval: Annotated[float, typer.Option(help="Seconds between rounds.")] = 1.0,
    remind_before: Annotated[
        str, typer.Option(help="Days before a due date to remind, e.g. '7,3,1' ('' none).")
    ] = "3",
    remind_after: Annotated[
        str, typer.Option(help="Days after a due date to remind of it overdue ('' none).")
    ] = "1,7",
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts before failed.")] = 10,
    base_delay: Annotated[float, typer.Option(min=0, help="First retry after ~s.")] = 30.0,
    max_delay: Annotated[float, typer.Option(min=0, help="Retries at most ~s apart.")] = 21600.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request.")] = 10.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 8,
) -> None:
    """Produce events from the mirror and deliver them, until SIGINT/SIGTERM (the round
    under way is finished first) or, with --once, after one round."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        deployment = Manifest.load(manifest)
        reminders = ReminderConfig(parse_days(remind_before), parse_days(remind_after))
        check_key()
    except (ManifestError, ValueError, SealingError) as exc:
        raise fail(exc) from exc
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        typer.echo(f"received {signal.Signals(signum).name}: stopping after this round", err=True)
        stop.set()

    if not once:
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)
    engine = make_engine(database_url)
    upgrade_schema(engine)
    policy = DeliveryPolicy(
        max_attempts=max_attempts,
        base_delay_s=base_delay,
        max_delay_s=max_delay,
        timeout_s=timeout,
        concurrency=concurrency,
    )
    try:
        with Deliverer(engine, policy) as deliverer:
            worker = Worker(
                engine,
                deployment.chain_id,
                deliverer,
                reminder_config=reminders,
                poll_interval_s=poll_interval,
            )
            if once:
                produced, attempts = worker.round()
                typer.echo(f"produced {produced} event(s), made {attempts} delivery attempt(s)")
            else:
                worker.run(stop)
    finally:
        engine.dispose()
