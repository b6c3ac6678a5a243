"""Ring-buffer record parsing from byte fixtures: headers, flags, padding, wrap-around."""

from __future__ import annotations

import struct

import pytest

from detector.ringbuf import BUSY_BIT, DISCARD_BIT, RingReader, record_span, take_records

SIZE = 64  # a tiny ring: records wrap quickly
MASK = SIZE - 1


def ring(records: list[tuple[int, bytes]], start: int = 0) -> tuple[bytes, int]:
    """The data area mapped twice, holding `records` (flags, payload) from position
    `start`; returns it and the producer position after the last record."""
    area = bytearray(b"\xee" * SIZE)  # stale bytes where nothing was written
    pos = start
    for flags, payload in records:
        rec = struct.pack("=II", len(payload) | flags, 0) + payload
        rec += b"\0" * (record_span(len(payload)) - len(rec))
        for i, byte in enumerate(rec):
            area[(pos + i) & MASK] = byte
        pos += len(rec)
    return bytes(area) * 2, pos


@pytest.mark.parametrize(
    ("length", "span"),
    [(0, 8), (1, 16), (8, 16), (9, 24), (592, 600), (5 | BUSY_BIT, 16), (5 | DISCARD_BIT, 16)],
)
def test_record_span_is_header_plus_data_padded_to_8(length: int, span: int) -> None:
    assert record_span(length) == span


@pytest.mark.parametrize(
    ("records", "start", "limit", "want", "consumed"),
    [
        # two plain records, one needing padding
        ([(0, b"abc"), (0, b"12345678")], 0, 10, [b"abc", b"12345678"], 32),
        # a discarded record is skipped but its space is consumed
        ([(0, b"a"), (DISCARD_BIT, b"zz"), (0, b"b")], 0, 10, [b"a", b"b"], 48),
        # a busy record stops the reader: nothing after it, not even submitted ones
        ([(0, b"a"), (BUSY_BIT, b"zz"), (0, b"b")], 0, 10, [b"a"], 16),
        # the limit stops after that many records
        ([(0, b"a"), (0, b"b"), (0, b"c")], 0, 2, [b"a", b"b"], 32),
        # a record crossing the end of the area reads whole through the second mapping
        ([(0, b"x" * 20), (0, b"y" * 20)], 40, 10, [b"x" * 20, b"y" * 20], 64),
        # positions keep growing past the size: only their low bits address the area
        ([(0, b"late")], 3 * SIZE + 8, 10, [b"late"], 16),
    ],
)
def test_take_records(
    records: list[tuple[int, bytes]], start: int, limit: int, want: list[bytes], consumed: int
) -> None:
    data, prod = ring(records, start)
    out: list[bytes] = []
    assert take_records(data, 0, start, prod, MASK, limit, out) == start + consumed
    assert out == want


def test_take_records_reads_from_base_offset_and_appends() -> None:
    data, prod = ring([(0, b"hello")])
    out = [b"earlier"]
    assert take_records(b"P" * 16 + data, 16, 0, prod, MASK, 10, out) == 16
    assert out == [b"earlier", b"hello"]


def test_take_records_with_nothing_new_returns_the_same_position() -> None:
    data, prod = ring([(0, b"a")])
    out: list[bytes] = []
    assert take_records(data, 0, prod, prod, MASK, 10, out) == prod
    assert out == []


@pytest.mark.parametrize("size", [0, -4096, 3 * 4096])
def test_reader_refuses_a_size_that_is_not_a_power_of_two(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        RingReader(-1, size)  # refused before the fd is touched
