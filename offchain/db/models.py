"""The mirror's tables.

Three kinds:

- the raw event log (`raw_events`): every contract log, append-only, unique by
  (chain id, block hash, log index) — the audit trail the rest is rebuilt from;
- facts, one row per event (`charges`, `invoice_payments`, ...): insert-only, each carrying
  the block and log it came from, so rolling back a reorg deletes them by block;
- projections, the current state of an entity (`plans`, `subscriptions`, `invoices`,
  approvals): updated as events arrive; inside the unconfirmed window each change first
  saves the row as it was into `projection_undo`, which a reorg rollback replays backwards.

Amounts are `Uint256` (exact in every database); addresses and hashes are lowercase
0x-hex text; times are unix seconds, as on-chain.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from offchain.db.types import Uint256

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base]) -> Table:
    """The Core table of a model, for the repositories' statements built without the ORM."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


Address = String(42)
Hash = String(66)


class SubscriptionState(StrEnum):
    """Stored lifecycle state, as the contract keeps it (time-derived status is computed)."""

    LIVE = "live"
    CANCELED = "canceled"
    LAPSED = "lapsed"


class InvoiceStatus(StrEnum):
    OPEN = "open"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    VOID = "void"


class ChargeFailureReason(StrEnum):
    INSUFFICIENT_ALLOWANCE = "insufficient_allowance"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    TRANSFER_REJECTED = "transfer_rejected"


# --------------------------------------------------------------- indexer state


class IndexerState(Base):
    """The cursor: everything up to `last_block` is in the mirror, in the same transaction."""

    __tablename__ = "indexer_state"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_block: Mapped[int] = mapped_column(BigInteger)
    last_block_hash: Mapped[str] = mapped_column(Hash)
    finalized_block: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Block(Base):
    """Headers of the blocks in the unconfirmed window, to detect a changed parent."""

    __tablename__ = "blocks"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[str] = mapped_column(Hash)
    parent_hash: Mapped[str] = mapped_column(Hash)
    timestamp: Mapped[int] = mapped_column(BigInteger)


class RawEvent(Base):
    """Every log of the watched contracts, as received: the append-only audit trail. Keyed
    by its log in chain order (see _Fact); no surrogate id, which would cost a sequence
    and an index more on every insert."""

    __tablename__ = "raw_events"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    log_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    block_hash: Mapped[str] = mapped_column(Hash, primary_key=True)
    block_time: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(Hash)
    contract: Mapped[str] = mapped_column(Address)
    event: Mapped[str] = mapped_column(String(64))
    topics: Mapped[str] = mapped_column(Text)  # comma-separated 0x-hex topics
    data: Mapped[str] = mapped_column(Text)  # 0x-hex


class ProjectionUndo(Base):
    """A projection row as it was before a block in the unconfirmed window changed it."""

    __tablename__ = "projection_undo"
    __table_args__ = (Index("ix_projection_undo_chain_block", "chain_id", "block_number"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    block_number: Mapped[int] = mapped_column(BigInteger)
    table_name: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(Text)  # JSON of the primary key
    old_row: Mapped[str | None] = mapped_column(Text)  # JSON, or NULL when the row was new


# ------------------------------------------------------------------------ facts


class _Fact:
    """Where a fact came from: one log. Unique per log, so a replay cannot double it.

    The key is (chain, block number, log index, block hash): unique per log as (chain,
    block hash, log index) is, since a block hash fixes its number, but in chain order, so
    the indexer appends to the end of the key's B-tree instead of writing all over it (a
    key led by a hash, which is random, makes every range rewrite most of the index's
    pages), and the key serves the queries by block range as well."""

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    log_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    block_hash: Mapped[str] = mapped_column(Hash, primary_key=True)
    block_time: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(Hash)
    contract: Mapped[str] = mapped_column(Address)


class Charge(_Fact, Base):
    __tablename__ = "charges"
    __table_args__ = (Index("ix_charges_subscription", "chain_id", "contract", "subscription_id"),)

    subscription_id: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[int] = mapped_column(BigInteger)
    paid_through: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(Uint256)
    fee: Mapped[int] = mapped_column(Uint256)


class ChargeFailure(_Fact, Base):
    __tablename__ = "charge_failures"
    __table_args__ = (
        Index("ix_charge_failures_subscription", "chain_id", "contract", "subscription_id"),
    )

    subscription_id: Mapped[int] = mapped_column(BigInteger)
    due_at: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(Uint256)
    reason: Mapped[str] = mapped_column(String(32))


class UsageReport(_Fact, Base):
    __tablename__ = "usage_reports"
    __table_args__ = (
        Index("ix_usage_reports_subscription", "chain_id", "contract", "subscription_id"),
    )

    subscription_id: Mapped[int] = mapped_column(BigInteger)
    usage_record_id: Mapped[str] = mapped_column(Hash)
    units: Mapped[int] = mapped_column(Uint256)
    unbilled_units: Mapped[int] = mapped_column(Uint256)
    billable_at: Mapped[int] = mapped_column(BigInteger)


class UsageCharge(_Fact, Base):
    __tablename__ = "usage_charges"

    subscription_id: Mapped[int] = mapped_column(BigInteger, index=True)
    units: Mapped[int] = mapped_column(Uint256)
    overage_amount: Mapped[int] = mapped_column(Uint256)


class CreditApplication(_Fact, Base):
    __tablename__ = "credit_applications"

    subscription_id: Mapped[int] = mapped_column(BigInteger, index=True)
    amount: Mapped[int] = mapped_column(Uint256)
    remaining_credit: Mapped[int] = mapped_column(Uint256)


class PlanChange(_Fact, Base):
    __tablename__ = "plan_changes"

    subscription_id: Mapped[int] = mapped_column(BigInteger, index=True)
    from_plan_id: Mapped[int] = mapped_column(BigInteger)
    to_plan_id: Mapped[int] = mapped_column(BigInteger)
    charged: Mapped[int] = mapped_column(Uint256)
    fee: Mapped[int] = mapped_column(Uint256)
    credit: Mapped[int] = mapped_column(Uint256)
    max_amount_per_period: Mapped[int] = mapped_column(Uint256)


class SubscriptionCancellation(_Fact, Base):
    __tablename__ = "subscription_cancellations"

    subscription_id: Mapped[int] = mapped_column(BigInteger, index=True)
    canceled_by: Mapped[str] = mapped_column(Address)
    effective_at: Mapped[int] = mapped_column(BigInteger)
    at_period_end: Mapped[bool] = mapped_column(Boolean)


class SubscriptionLapse(_Fact, Base):
    __tablename__ = "subscription_lapses"

    subscription_id: Mapped[int] = mapped_column(BigInteger, index=True)
    lapsed_at: Mapped[int] = mapped_column(BigInteger)


class InvoicePayment(_Fact, Base):
    __tablename__ = "invoice_payments"

    invoice_id: Mapped[str] = mapped_column(Hash, index=True)
    payer: Mapped[str] = mapped_column(Address, index=True)
    amount: Mapped[int] = mapped_column(Uint256)
    fee: Mapped[int] = mapped_column(Uint256)


class InvoiceRefund(_Fact, Base):
    __tablename__ = "invoice_refunds"

    invoice_id: Mapped[str] = mapped_column(Hash, index=True)
    recipient: Mapped[str] = mapped_column(Address)
    amount: Mapped[int] = mapped_column(Uint256)


class InvoiceSettlement(_Fact, Base):
    __tablename__ = "invoice_settlements"

    invoice_id: Mapped[str] = mapped_column(Hash, index=True)
    settler: Mapped[str] = mapped_column(Address)
    amount: Mapped[int] = mapped_column(Uint256)
    fiat_reference: Mapped[str] = mapped_column(Hash)


# ------------------------------------------------------------------ projections


class Plan(Base):
    __tablename__ = "plans"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    contract: Mapped[str] = mapped_column(Address, primary_key=True)
    plan_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    merchant: Mapped[str] = mapped_column(Address, index=True)
    token: Mapped[str] = mapped_column(Address)
    price: Mapped[int] = mapped_column(Uint256)
    period: Mapped[int] = mapped_column(BigInteger)
    trial_period: Mapped[int] = mapped_column(BigInteger)
    grace_period: Mapped[int] = mapped_column(BigInteger)
    unit_price: Mapped[int] = mapped_column(Uint256)
    included_units: Mapped[int] = mapped_column(Uint256)
    active: Mapped[bool] = mapped_column(Boolean)
    created_block: Mapped[int] = mapped_column(BigInteger)


class Subscription(Base):
    __tablename__ = "subscriptions"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    contract: Mapped[str] = mapped_column(Address, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    plan_id: Mapped[int] = mapped_column(BigInteger, index=True)
    subscriber: Mapped[str] = mapped_column(Address, index=True)
    max_amount_per_period: Mapped[int] = mapped_column(Uint256)
    started_at: Mapped[int] = mapped_column(BigInteger)
    paid_through: Mapped[int] = mapped_column(BigInteger, index=True)
    state: Mapped[str] = mapped_column(String(16))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean)
    past_due: Mapped[bool] = mapped_column(Boolean)
    in_trial: Mapped[bool] = mapped_column(Boolean)
    credit: Mapped[int] = mapped_column(Uint256)
    unbilled_units: Mapped[int] = mapped_column(Uint256)
    created_block: Mapped[int] = mapped_column(BigInteger)


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        # The gateway's lookups walk these in (due_date, invoice_id) order (keyset pages);
        # the first replaced (merchant, due_date), its prefix, which PostgreSQL preferred
        # for being smaller and then had to sort each due date's rows by invoice_id.
        Index("ix_invoices_merchant_due_id", "merchant", "due_date", "invoice_id"),
        Index("ix_invoices_merchant_status_due_id", "merchant", "status", "due_date", "invoice_id"),
        Index("ix_invoices_customer_due_id", "customer", "due_date", "invoice_id"),
        Index("ix_invoices_reference_hash", "reference_hash"),
    )

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    contract: Mapped[str] = mapped_column(Address, primary_key=True)
    invoice_id: Mapped[str] = mapped_column(Hash, primary_key=True)
    merchant: Mapped[str] = mapped_column(Address)
    customer: Mapped[str] = mapped_column(Address)
    reference_hash: Mapped[str] = mapped_column(Hash)
    token: Mapped[str] = mapped_column(Address)
    amount: Mapped[int] = mapped_column(Uint256)
    due_date: Mapped[int] = mapped_column(BigInteger)
    allow_partial: Mapped[bool] = mapped_column(Boolean)
    content_hash: Mapped[str] = mapped_column(Hash)
    paid: Mapped[int] = mapped_column(Uint256)
    status: Mapped[str] = mapped_column(String(16))
    issued_block: Mapped[int] = mapped_column(BigInteger)
    issued_at: Mapped[int] = mapped_column(BigInteger)


class Approval(Base):
    """Operators and settlers a merchant approved (`OperatorSet`, `SettlerSet`)."""

    __tablename__ = "approvals"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    contract: Mapped[str] = mapped_column(Address, primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    merchant: Mapped[str] = mapped_column(Address, primary_key=True)
    grantee: Mapped[str] = mapped_column(Address, primary_key=True)
    approved: Mapped[bool] = mapped_column(Boolean)


FACT_TABLES = [
    Charge,
    ChargeFailure,
    UsageReport,
    UsageCharge,
    CreditApplication,
    PlanChange,
    SubscriptionCancellation,
    SubscriptionLapse,
    InvoicePayment,
    InvoiceRefund,
    InvoiceSettlement,
]
PROJECTION_TABLES = [Plan, Subscription, Invoice, Approval]


# ---------------------------------------------------------------------- gateway
# Tables the gateway owns (not derived from events): never touched by a reorg rollback.


class InvoiceDocument(Base):
    """The off-chain content of an invoice created through the gateway (line items, taxes,
    notes), stored before its transaction is mined; `content_hash` (keccak-256 of the
    canonical JSON in `content`) is what the invoice carries on-chain."""

    __tablename__ = "invoice_documents"
    __table_args__ = (Index("ix_invoice_documents_merchant_created", "merchant", "created_at"),)

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    contract: Mapped[str] = mapped_column(Address, primary_key=True)
    invoice_id: Mapped[str] = mapped_column(Hash, primary_key=True)
    merchant: Mapped[str] = mapped_column(Address)
    reference: Mapped[str] = mapped_column(String(128))
    reference_hash: Mapped[str] = mapped_column(Hash)
    customer: Mapped[str] = mapped_column(Address)
    token: Mapped[str] = mapped_column(Address)
    amount: Mapped[int] = mapped_column(Uint256)
    due_date: Mapped[int] = mapped_column(BigInteger)
    allow_partial: Mapped[bool] = mapped_column(Boolean)
    content: Mapped[str] = mapped_column(Text)  # canonical JSON
    content_hash: Mapped[str] = mapped_column(Hash)
    transaction_hash: Mapped[str | None] = mapped_column(Hash, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """A merchant's API key: only a SHA-256 of its secret is kept (the key is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    merchant: Mapped[str] = mapped_column(Address, index=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SiweNonce(Base):
    """A Sign-In with Ethereum nonce: issued once, accepted once, before it expires."""

    __tablename__ = "siwe_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CustomerSession(Base):
    """A customer signed in with Ethereum; only a SHA-256 of the bearer token is kept."""

    __tablename__ = "customer_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(Address, index=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IdempotencyRecord(Base):
    """A POST made with an `Idempotency-Key`: the request's fingerprint and, once it has
    finished, the response that every retry with the same key gets back."""

    __tablename__ = "idempotency_records"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)  # who asked
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of method, path, body
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: running
    response_headers: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class GatewaySecret(Base):
    """Server-side secrets shared by every gateway worker (the key behind public invoice
    links) when none is given in the environment."""

    __tablename__ = "gateway_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --------------------------------------------------------------------- webhooks
# Outgoing webhooks: tables the webhook worker and the gateway own. Events are produced
# from the mirror into an outbox; a reorg rollback never touches them (an unconfirmed
# event, once produced, stays what it said it was: unconfirmed).


class WebhookDeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SUCCEEDED = "succeeded"  # the endpoint answered 2xx
    FAILED = "failed"  # every attempt failed: replay it to try again
    CANCELED = "canceled"  # never sent: its unconfirmed event was orphaned by a reorg


class WebhookEndpoint(Base):
    """A merchant's receiver. An HMAC needs the signing secret itself: it is stored sealed
    under CHAINBILL_WEBHOOK_SECRETS_KEY when that is set, else in the clear (see
    offchain/webhooks/sealing.py); during a rotation the previous one keeps signing until it
    expires."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    public_id: Mapped[str] = mapped_column(String(40), unique=True)  # we_...
    merchant: Mapped[str] = mapped_column(Address, index=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(200))
    secret: Mapped[str] = mapped_column(String(255))  # sealed: ~170 characters
    previous_secret: Mapped[str | None] = mapped_column(String(255), nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean)
    include_unconfirmed: Mapped[bool] = mapped_column(Boolean)
    event_types: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list; None: all
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookEvent(Base):
    """The outbox: one event, immutable once produced. `dedupe_key` names its source (a
    log and whether the event is the final or the unconfirmed one, or a reminder and its
    day), so producing twice inserts once."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_merchant_created", "merchant", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)  # evt_...
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    merchant: Mapped[str] = mapped_column(Address)
    type: Mapped[str] = mapped_column(String(64))
    final: Mapped[bool] = mapped_column(Boolean)
    payload: Mapped[str] = mapped_column(Text)  # the exact JSON body every attempt sends
    chain_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    block_hash: Mapped[str | None] = mapped_column(Hash, nullable=True)
    log_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """One event to one endpoint: its state and when it is tried next."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_merchant_id", "merchant", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    public_id: Mapped[str] = mapped_column(String(40), unique=True)  # whd_...
    event_id: Mapped[int] = mapped_column(BigInteger)
    endpoint_id: Mapped[int] = mapped_column(BigInteger)
    merchant: Mapped[str] = mapped_column(Address)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)  # in the current round (a replay resets it)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookAttempt(Base):
    """The delivery log: every attempt, as it went."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... over every round
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookProducerState(Base):
    """The producer's cursor: events of every block up to `final_block` are produced."""

    __tablename__ = "webhook_producer_state"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    final_block: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# ----------------------------------------------------------------------- keeper
# Tables the keeper owns (not derived from events): its transactions, recorded before they
# are sent, and its view of each subscription (work claims, dunning, at-risk flags).


class KeeperTxKind(StrEnum):
    CHARGE_BATCH = "charge_batch"
    FINALIZE_LAPSE = "finalize_lapse"


class KeeperTxStatus(StrEnum):
    """Where a keeper transaction stands. Only `pending` and `mined` are unresolved."""

    PENDING = "pending"  # signed and recorded; broadcast, or about to be; not in a block
    MINED = "mined"  # in a block (receipt seen), not yet `confirmations` deep
    CONFIRMED = "confirmed"  # `confirmations` deep: final
    DROPPED = "dropped"  # its nonce went to another transaction: it can never be mined


UNRESOLVED_TX_STATUSES = (KeeperTxStatus.PENDING, KeeperTxStatus.MINED)


class KeeperTransaction(Base):
    """One transaction of a keeper: one (sender, nonce). Recorded, with its signed attempts,
    before anything is broadcast, so a restart knows everything that may be on the wire."""

    __tablename__ = "keeper_transactions"
    __table_args__ = (UniqueConstraint("chain_id", "sender", "nonce"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    contract: Mapped[str] = mapped_column(Address)
    sender: Mapped[str] = mapped_column(Address)
    nonce: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    subscription_ids: Mapped[str] = mapped_column(Text)  # comma-separated, calldata order
    gas_limit: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    broadcast_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mined_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mined_tx_hash: Mapped[str | None] = mapped_column(Hash, nullable=True)
    succeeded: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # receipt status
    gas_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KeeperTxAttempt(Base):
    """One signed version of a keeper transaction: the first, then each fee-bumped
    replacement at the same nonce. Any of them may be the one mined."""

    __tablename__ = "keeper_tx_attempts"

    tx_hash: Mapped[str] = mapped_column(Hash, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(BigInteger, index=True)
    raw_tx: Mapped[str] = mapped_column(Text)  # 0x-hex signed transaction
    max_fee_per_gas: Mapped[int] = mapped_column(Uint256)
    max_priority_fee_per_gas: Mapped[int] = mapped_column(Uint256)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KeeperSubscription(Base):
    """The keeper's own state of a subscription: who is working on it (a claim with a lease,
    or the unresolved transaction that holds it), what the keeper learned from its receipts
    ahead of the mirror, the dunning schedule, and the at-risk flag."""

    __tablename__ = "keeper_subscriptions"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    contract: Mapped[str] = mapped_column(Address, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    known_paid_through: Mapped[int] = mapped_column(BigInteger)
    transaction_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claim_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    failures: Mapped[int] = mapped_column(Integer)
    failed_due_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_failure_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    next_retry_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    lapsed: Mapped[bool] = mapped_column(Boolean)
    at_risk: Mapped[bool] = mapped_column(Boolean, index=True)
    at_risk_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    at_risk_due_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    at_risk_amount: Mapped[int | None] = mapped_column(Uint256, nullable=True)
    at_risk_checked_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
