"""Webhook signing secrets at rest.

An HMAC needs the secret itself, so it cannot be stored as a hash the way API keys are. With
`CHAINBILL_WEBHOOK_SECRETS_KEY` set, it is stored sealed (Fernet: AES-128-CBC with an
HMAC-SHA256, from the `cryptography` package) under a key that lives outside the database:
a copy of the database alone — a backup, a replica, a leaked dump — then forges no webhook.
Without it, secrets are stored as they are (local development, `make run`).

The variable holds one or more comma-separated Fernet keys: the first seals, each opens, so
a key is rotated by putting the new one first and, once `chainbill webhooks seal-secrets`
has sealed every secret again, dropping the old one. A stored value says how it is stored
(`fernet:` or not), so clear and sealed secrets may coexist while a database is converted."""

from __future__ import annotations

import functools
import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SECRETS_KEY_ENV = "CHAINBILL_WEBHOOK_SECRETS_KEY"
SEALED_PREFIX = "fernet:"
NEW_KEY_HINT = (
    ".venv/bin/python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)


class SealingError(RuntimeError):
    """The secrets key is missing, malformed, or not the one a secret was sealed with."""


def _box() -> MultiFernet | None:
    configured = os.environ.get(SECRETS_KEY_ENV, "").strip()
    return _box_for(configured) if configured else None


# Keyed by the variable's value, so a key rotated in the environment is used at once; the
# cache spares parsing the keys again for every secret sealed or opened.
@functools.lru_cache(maxsize=4)
def _box_for(configured: str) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.strip()) for key in configured.split(",")])
    except (ValueError, TypeError) as exc:
        raise SealingError(
            f"{SECRETS_KEY_ENV} must be one or more comma-separated Fernet keys (32 bytes, "
            f"url-safe base64); make one with: {NEW_KEY_HINT}"
        ) from exc


def check_key() -> bool:
    """Whether a key is set; a malformed one is refused here, at start, rather than at the
    first secret sealed or opened."""
    return _box() is not None


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


def seal(secret: str) -> str:
    """What to store for `secret`: sealed under the first key, or as it is without one."""
    box = _box()
    if box is None:
        return secret
    return SEALED_PREFIX + box.encrypt(secret.encode()).decode()


def unseal(stored: str) -> str:
    """The secret behind a stored value."""
    if not is_sealed(stored):
        return stored
    box = _box()
    if box is None:
        raise SealingError(
            f"webhook secrets in this database are sealed: set {SECRETS_KEY_ENV} to the key "
            "they were sealed with"
        )
    try:
        return box.decrypt(stored[len(SEALED_PREFIX) :].encode()).decode()
    except InvalidToken as exc:
        raise SealingError(
            f"a webhook secret was sealed with a key that is not in {SECRETS_KEY_ENV}"
        ) from exc


def reseal(stored: str) -> str:
    """`stored` sealed under the first key now (clear, or sealed under an older key)."""
    return seal(unseal(stored))
