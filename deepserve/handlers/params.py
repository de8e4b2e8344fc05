"""Request parameters (KServe ``parameters``, TorchServe query strings, JSON fields), checked once.

TorchServe passes query parameters as strings, so numbers and booleans are parsed from text too.
"""

from __future__ import annotations

from typing import Any

from deepserve.handlers.base import InvalidInputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes | bytearray) else value


def int_param(params: dict[str, Any], name: str, default: int, *, low: int, high: int | None = None) -> int:
    value = _text(params.get(name, default))
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"parameter {name!r} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise InvalidInputError(f"parameter {name!r} must be in {bounds}, got {number}")
    return number


def bool_param(params: dict[str, Any], name: str, default: bool) -> bool:
    value = _text(params.get(name, default))
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise InvalidInputError(f"parameter {name!r} must be true or false, got {value!r}")
