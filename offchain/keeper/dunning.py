"""Dunning: when to retry a failed charge inside its grace period, and which upcoming
charges the subscriber's allowance or balance will not cover (at risk).

Pure functions: the keeper feeds them what it read from the mirror and the node.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

# Retries at these fractions of the grace period after the due date. Fractions, not
# durations: plans' grace periods range from an hour to years, and a schedule in days
# would leave a one-hour grace without retries and a 30-day one with too few. The last one
# leaves a tenth of the grace for the subscriber to react before the lapse.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)


def parse_retry_schedule(text: str) -> tuple[float, ...]:
    """ "0.25,0.5,0.9" -> (0.25, 0.5, 0.9); increasing fractions in (0, 1)."""
    try:
        fractions = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            f"retry schedule {text!r} is not a comma-separated list of fractions of the grace "
            "period, e.g. 0.25,0.5,0.9"
        ) from None
    if not all(0 < f < 1 for f in fractions) or list(fractions) != sorted(set(fractions)):
        raise ValueError(
            f"retry schedule {text!r}: fractions of the grace period must be increasing and "
            "strictly between 0 and 1 (a retry at or after the grace end cannot collect)"
        )
    return fractions


def next_retry_at(due_at: int, grace: int, failed_at: int, schedule: Sequence[float]) -> int:
    """When to retry a charge due at `due_at` that failed at `failed_at` (chain time): the
    first point of the schedule after the failure. With none left, the grace end, by which
    time the subscription lapses instead (a keeper that was down skips the missed points
    rather than retrying in a burst)."""
    for fraction in schedule:
        at = due_at + int(grace * fraction)
        if at > failed_at:
            return at
    return due_at + grace


class RiskReason(StrEnum):
    ALLOWANCE = "insufficient_allowance"
    BALANCE = "insufficient_balance"


@dataclass(frozen=True)
class Upcoming:
    """A charge falling due within the look-ahead window."""

    subscription_id: int
    subscriber: str
    token: str
    due_at: int
    amount: int


@dataclass(frozen=True)
class Risk:
    subscription_id: int
    due_at: int
    amount: int
    reason: RiskReason | None  # None: covered


def assess(
    upcoming: Sequence[Upcoming], funds: dict[tuple[str, str], tuple[int, int]]
) -> list[Risk]:
    """Each upcoming charge, at risk or not. A subscriber's allowance and balance pay all of
    its charges in that token, so they are spent in due order: the third of three monthly
    charges is at risk when the funds cover only two. `funds` maps (token, subscriber) to
    (allowance, balance)."""
    by_wallet: dict[tuple[str, str], list[Upcoming]] = defaultdict(list)
    for charge in upcoming:
        by_wallet[(charge.token, charge.subscriber)].append(charge)
    risks: list[Risk] = []
    for wallet, charges in by_wallet.items():
        allowance, balance = funds[wallet]
        needed = 0
        for charge in sorted(charges, key=lambda c: (c.due_at, c.subscription_id)):
            needed += charge.amount
            reason = None
            if needed > allowance:
                reason = RiskReason.ALLOWANCE
            elif needed > balance:
                reason = RiskReason.BALANCE
            risks.append(Risk(charge.subscription_id, charge.due_at, charge.amount, reason))
    return risks
