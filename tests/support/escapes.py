"""Test support: reading back what the detector's text sinks escaped."""

from __future__ import annotations


def unescape(text: str) -> bytes:
    """The inverse of escape_text, written independently: C-style escapes back to bytes."""
    out, i = bytearray(), 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out += char.encode()
            i += 1
            continue
        kind = text[i + 1]
        if kind in "\\nrt":
            out += {"\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t"}[kind]
            i += 2
        elif kind == "x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            assert kind == "u", text
            out += chr(int(text[i + 2 : i + 6], 16)).encode()
            i += 6
    return bytes(out)
