"""ConfigError and the field checks every config validator shares (scaling.config, the mixer specs of
scaling.mixers). Imports nothing of statescale, so the lowest layer can raise the one error type."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config field has a bad value. The message names the field and what it accepts."""


def fail(field: str, value, accepted: str):
    raise ConfigError(f"{field} = {value!r}: {accepted}")


def check_int(field: str, value, lo: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        fail(field, value, f"must be an integer >= {lo}")


def check_choice(field: str, value, choices) -> None:
    if value not in choices:
        fail(field, value, f"must be one of {', '.join(map(str, choices))}")


def env_positive(name: str, unit: str) -> float | None:
    """The number > 0 in environment variable ``name`` (None if unset or empty); ValueError naming it otherwise."""
    import os

    given = os.environ.get(name)
    if not given:
        return None
    try:
        value = float(given)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name} = {given!r}: must be a number of {unit} > 0")
    return value
