"""Sizes as operators write them: 1048576, 512KiB, 1MiB (or Kubernetes' 1Mi), 1MB: IEC units
are powers of 1024, SI units powers of 1000, a bare number is bytes. `1m` is refused: megabytes
to some, mebibytes to Docker, "milli" to Kubernetes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_EXPECTED = "expected a number of bytes or a size like 512KiB, 1MiB or 1MB"


def parse_size(value: Any) -> Any:
    """Bytes in `value`; other types go on to the field's own check. Quotes no input."""
    if isinstance(value, bool):
        raise ValueError(_EXPECTED)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        return value
    try:
        return parse_size(float(value))  # "1e6": YAML 1.1 reads it as a string
    except ValueError:
        pass
    match = _SIZE.fullmatch(value.strip())
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(_EXPECTED)
    size = float(match.group(1)) * unit
    if not size.is_integer():
        raise ValueError("a size must be a whole number of bytes")
    return int(size)


def format_size(size: Any) -> str:
    """The shortest way to write `size` bytes back, as relay reads it (1KiB, 64MiB, 1MB, 512B);
    what is not a whole number of bytes (the text of one) as it is."""
    if isinstance(size, float) and size.is_integer():
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool):
        return str(size)
    for unit in ("GiB", "MiB", "KiB", "GB", "MB", "kB"):
        scale = _UNITS[unit.lower()]
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def is_size(metadata: Iterable[Any]) -> bool:
    """Whether a field's metadata (pydantic's FieldInfo.metadata) makes it a Size."""
    return any(isinstance(m, BeforeValidator) and m.func is parse_size for m in metadata)


Size = Annotated[int, BeforeValidator(parse_size)]
