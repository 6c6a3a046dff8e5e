"""File names as the manifest holds them: one rule for names whose bytes are not UTF-8.

Linux names are bytes; Python carries the bytes that do not decode as UTF-8 as surrogate escapes
(``os.fsdecode``). :func:`printable_name` gives a name every JSON reader and file system can hold:
each such byte as ``%XX`` (upper-case hex), a valid name unchanged; :func:`name_record` gives that
name and, when it differs, the original bytes in hex (lossless); :func:`name_bytes` the bytes.
"""

from __future__ import annotations

import os

__all__ = ["name_bytes", "name_record", "printable_name"]


def _escaped(ch: str) -> bool:
    return 0xDC80 <= ord(ch) <= 0xDCFF


def printable_name(name: str) -> str:
    if not any(_escaped(ch) for ch in name):
        return name
    return "".join(f"%{ord(ch) - 0xDC00:02X}" if _escaped(ch) else ch for ch in name)


def name_bytes(name: str) -> bytes:
    """The name's bytes on disk (lossless, whatever the encoding)."""
    return os.fsencode(name)


def name_record(name: str, key: str) -> dict:
    """``{key: printable name}``, plus ``{key}_bytes_hex`` with the original bytes where they differ."""
    shown = printable_name(name)
    return {key: shown} if shown == name else {key: shown, f"{key}_bytes_hex": name_bytes(name).hex()}
