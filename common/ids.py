"""Identifier validation: ids travel in topics and become file names, so a safe alphabet only."""

from __future__ import annotations

import re

from common.errors import ProtocolError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_safe_id(value: object) -> bool:
    """True when ``value`` is usable as a topic level and a file name (no ``/``, no ``..``)."""
    return isinstance(value, str) and bool(_ID_RE.match(value)) and ".." not in value


def id_value(value: str, what: str = "id") -> str:
    """For schema validators: raise ValueError (which pydantic reports with the field name)."""
    if not is_safe_id(value):
        raise ValueError(f"invalid {what} {value!r}: use [A-Za-z0-9_.-], no '/' or '..'")
    return value


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a safe id, else raise ProtocolError naming ``what``."""
    if not is_safe_id(value):
        raise ProtocolError(
            f"invalid {what} {value!r}: use 1-128 of [A-Za-z0-9_.-], starting alphanumeric, no '..'"
        )
    assert isinstance(value, str)
    return value
