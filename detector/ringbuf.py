"""A BPF ring buffer read straight from its memory mapping, the way libbpf does it,
without a C callback per record.

Layout (kernel/bpf/ringbuf.c): the map fd maps one page holding the consumer
position (ours to write), one page holding the producer position (the kernel's),
then the data area twice in a row, so a record that wraps around the end reads as
one contiguous range. Each record has an 8-byte header: a u32 length with two flag
bits (BUSY: reserved, not yet submitted; DISCARD: skip it), then a u32 page offset
only the kernel uses. Records are padded to 8 bytes.

Ordering: the kernel publishes a record's header and the producer position with release
stores; Python has no acquire load, so this relies on x86's ordered loads (the machines
podlock runs on). An arm64 port needs a barrier here (libbpf uses smp_load_acquire).

`take_records` is the pure part (bytes-like in, copies out); `RingReader` owns the
mappings and the epoll on the map fd (the kernel wakes its pollers).
"""

from __future__ import annotations

import mmap
import select
import struct

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8
_LEN_MASK = DISCARD_BIT - 1
# native format: the kernel writes the length word in host order, and a native unpack is
# a single aligned load (the standard "<I" assembles bytes one by one and could tear)
_U32 = struct.Struct("I")


def record_span(header_len: int) -> int:
    """Bytes a record takes in the ring: header + data, padded to 8."""
    return (HDR_SIZE + (header_len & _LEN_MASK) + 7) & ~7


def take_records(
    data: bytes | mmap.mmap,
    base: int,
    cons: int,
    prod: int,
    mask: int,
    limit: int,
    out: list[bytes],
) -> int:
    """Append copies of the submitted records between the positions `cons` and `prod`
    to `out`, at most `limit`, stopping at a record still being written (BUSY).
    The data area, mapped twice (2 * (mask + 1) bytes), starts at `data[base]`.
    Returns the new consumer position (past discarded records too)."""
    unpack_len = _U32.unpack_from
    taken = 0
    while cons < prod and taken < limit:
        off = base + (cons & mask)
        (length,) = unpack_len(data, off)
        if length & BUSY_BIT:
            break
        cons += record_span(length)
        if not length & DISCARD_BIT:
            out.append(data[off + HDR_SIZE : off + HDR_SIZE + (length & _LEN_MASK)])
            taken += 1
    return cons


class RingReader:
    """The consumer side of one BPF_MAP_TYPE_RINGBUF map. `close()` unmaps it."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"a ring buffer's size is a power of two, not {size}")
        page = mmap.PAGESIZE
        self._mask = size - 1
        self._cons_page = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self._prod = mmap.mmap(
                map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._cons_page.close()
            raise
        self._base = page  # the data area's offset in _prod
        # the positions as 64-bit words: an item read or store through a memoryview is one
        # aligned access. (struct.pack_into zeroes its target before writing: the kernel
        # could read a consumer position of 0 in between, think the ring full and drop.)
        self._cons = memoryview(self._cons_page).cast("Q")
        self._prod_pos = memoryview(self._prod)[:8].cast("Q")
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def _take(self, limit: int, out: list[bytes]) -> None:
        cons = self._cons[0]
        prod = self._prod_pos[0]
        if cons < prod:
            new = take_records(self._prod, self._base, cons, prod, self._mask, limit, out)
            if new != cons:
                # the records are copied out: their space goes back to the kernel now
                self._cons[0] = new

    def read(self, timeout_ms: int, limit: int) -> list[bytes]:
        """Up to `limit` records; waits up to timeout_ms only when none is ready."""
        out: list[bytes] = []
        self._take(limit, out)
        if not out:
            self._epoll.poll(timeout_ms / 1000)
            self._take(limit, out)
        return out

    def close(self) -> None:
        self._epoll.close()
        self._cons.release()
        self._prod_pos.release()
        self._prod.close()
        self._cons_page.close()
