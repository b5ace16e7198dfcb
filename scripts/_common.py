"""Shared by the merchant scripts (files starting with `_` are not scripts to Ape)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from ape import chain, networks, project

from offchain.manifest import Manifest, ManifestError, default_manifest_path
from offchain.money import AmountError, format_units, to_base_units

LOCAL_CHAIN_ID = 31337


def manifest_path(option: str | None) -> Path:
    return Path(option) if option else default_manifest_path(networks.network.name)


def load_manifest(option: str | None) -> Manifest:
    path = manifest_path(option)
    try:
        manifest = Manifest.load(path)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from exc
    if manifest.chain_id != chain.chain_id:
        raise click.ClickException(
            f"{path} describes chain {manifest.chain_id} but the connected chain is "
            f"{chain.chain_id}: redeploy (`make run`) or pass --manifest for this chain"
        )
    return manifest


def contract(manifest: Manifest, name: str) -> Any:
    return project.get_contract(name).at(manifest.address_of(name))


def erc20(address: str) -> Any:
    # Any ERC-20 speaks the mock stablecoin's transfer/approve/decimals ABI.
    return project.MockStablecoin.at(address)


def parse_amount(text: str, token: Any) -> int:
    try:
        return to_base_units(text, int(token.decimals()))
    except AmountError as exc:
        raise click.BadParameter(str(exc)) from exc


def show_amount(units: int, token: Any) -> str:
    return f"{format_units(units, int(token.decimals()))} {token.symbol()}"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"3600"`` (seconds) → seconds."""
    value = text.strip().lower()
    unit = _DURATION_UNITS.get(value[-1:]) if value else None
    number = value[:-1] if unit else value
    if not number.isdigit():
        raise click.BadParameter(f"{text!r} is not a duration: use e.g. 30d, 12h, 90m or seconds")
    return int(number) * (unit or 1)


def event_args(receipt: Any, contract_address: str, name: str) -> list[Any]:
    return [
        log
        for log in receipt.events
        if log.event_name == name and str(log.contract_address) == str(contract_address)
    ]
