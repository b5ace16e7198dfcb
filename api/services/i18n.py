"""Languages of the hosted invoice page and the PDF: gettext catalogs read from the .po
files under api/locales at startup (no compile step), locale negotiation, and Babel
formatting of amounts and dates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from functools import cache
from pathlib import Path

from babel import Locale
from babel.dates import format_datetime
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.numbers import format_percent as format_percent_babel

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
DEFAULT_LOCALE = "en"
# English is the source language: its messages are the msgids themselves.
SUPPORTED = ("en", "de", "fr")
LANGUAGE_NAMES = {"en": "English", "de": "Deutsch", "fr": "Français"}

Gettext = Callable[[str], str]


@cache
def catalog(locale: str) -> Catalog | None:
    path = LOCALES_DIR / locale / "LC_MESSAGES" / "messages.po"
    if not path.exists():
        return None
    with path.open("rb") as handle:
        return read_po(handle, locale=locale)


def gettext_for(locale: str) -> Gettext:
    messages = catalog(locale)
    table: dict[str, str] = {}
    if messages is not None:
        for message in messages:
            if message.id and isinstance(message.id, str) and message.string and not message.fuzzy:
                table[message.id] = str(message.string)

    def gettext(msgid: str) -> str:
        return table.get(msgid, msgid)

    return gettext


@cache
def translator(locale: str) -> Gettext:
    return gettext_for(locale)


def _accept_language(header: str) -> list[str]:
    """Language tags of an Accept-Language header, best first (q=0 dropped)."""
    weighted = []
    for position, part in enumerate(header.split(",")[:20]):
        pieces = part.strip().split(";")
        tag = pieces[0].strip()
        if not tag or tag == "*":
            continue
        quality = 1.0
        for parameter in pieces[1:]:
            name, _, value = parameter.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            weighted.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(weighted)]


def negotiate(lang: str | None, accept_language: str | None) -> str:
    """`?lang=` when it names a supported language, then Accept-Language, then English."""
    candidates = []
    if lang:
        candidates.append(lang.strip())
    if accept_language:
        candidates.extend(_accept_language(accept_language))
    for tag in candidates:
        chosen = Locale.negotiate([tag.replace("_", "-")], SUPPORTED, sep="-")
        if chosen is None:
            # "de-AT" with only "de" available: fall back on the language alone.
            chosen = Locale.negotiate([tag.replace("_", "-").split("-")[0]], SUPPORTED, sep="-")
        if chosen is not None:
            return str(chosen)
    return DEFAULT_LOCALE


def amount(units: int, decimals: int | None, locale: str) -> str:
    """Base units as a localized decimal with every significant digit and at least two
    fraction digits (exact: a 200-digit context holds any uint256)."""
    if decimals is None:
        return format_decimal(units, format="#,##0", locale=locale)
    with localcontext() as context:
        context.prec = 200
        value = Decimal(units).scaleb(-decimals)
        minimum = (
            "#,##0.00" if decimals >= 2 else "#,##0" + ("." + "0" * decimals if decimals else "")
        )
        return format_decimal(value, format=minimum, locale=locale, decimal_quantization=False)


def money(units: int, decimals: int | None, symbol: str | None, locale: str) -> str:
    text = amount(units, decimals, locale)
    return f"{text} {symbol}" if symbol else text


def date(timestamp: int, locale: str) -> str:
    moment = datetime.fromtimestamp(min(max(timestamp, 0), 253402300799), UTC)
    return format_datetime(moment, "medium", tzinfo=UTC, locale=locale) + " UTC"


def format_percent(rate_percent: str, locale: str) -> str:
    """A tax rate given in percent ("7.25") as the locale writes it ("7,25 %" in German)."""
    with localcontext() as context:
        context.prec = 50
        value = Decimal(rate_percent) / 100
        return format_percent_babel(value, locale=locale, decimal_quantization=False)


def N_(msgid: str) -> str:
    """Marks a message for extraction where it is defined; translated where it is shown."""
    return msgid
