"""Load, attach and poll podlock's BPF object through libbpf. The only module that
touches libbpf; one cleanup path (`close`) undoes whatever `start` got to.

    open -> set read-only data -> load -> attach -> map the ring buffer -> poll
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from detector import libbpf
from detector.decode import CgroupC, LabelC
from detector.events import Session
from detector.ringbuf import RingReader

DEFAULT_OBJECT = Path(__file__).parent / "bpf" / "podlock.bpf.o"
BPF_NOEXIST = 1
POLL_LIMIT = 4096  # records per poll: a backlog is handled (and its alerts written) in slices

_SESSION_CODES = {Session.CONTAINER: 1, Session.EXEC: 2}


class LoaderError(Exception):
    """The probes could not be loaded or attached; str() is one sentence for the user."""


@dataclass(frozen=True, slots=True)
class ProgStats:
    name: str
    run_time_ns: int
    run_cnt: int


def _possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class Loader:
    """The attached probes. Use `start()`, then `poll()`; always `close()`."""

    def __init__(
        self,
        host_mnt_ns: int,
        obj_path: Path = DEFAULT_OBJECT,
        ring_bytes: int | None = None,
    ) -> None:
        self._host_mnt_ns = host_mnt_ns
        self._obj_path = obj_path
        self._ring_bytes = ring_bytes
        self._lib = libbpf.lib()
        self._obj: int | None = None
        self._links: list[int] = []
        self._progs: dict[str, int] = {}
        self._ring: RingReader | None = None
        self._log: list[str] = []  # libbpf's last 5000 lines, for error messages
        # keep a reference: libbpf calls it after we return
        self._on_print = libbpf.PrintCallback(self._print)
        self._print_buf = ctypes.create_string_buffer(1 << 16)  # one, for every log line
        self._fds: dict[str, int] = {}
        self._ncpus = _possible_cpus()

    # ---- libbpf callbacks ---------------------------------------------------
    def _print(self, _level: int, fmt: bytes | None, args: int | None) -> int:
        buf = self._print_buf
        libbpf.vsnprintf()(buf, len(buf), fmt, args)
        self._log.append(buf.value.decode(errors="replace").rstrip())
        del self._log[:-5000]
        return 0

    # ---- life cycle ----------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        lib = self._lib
        lib.libbpf_set_print(self._on_print)
        if not self._obj_path.exists():
            raise LoaderError(
                f"the BPF object {self._obj_path} is missing; build it with `make bpf`."
            )
        obj = lib.bpf_object__open_file(str(self._obj_path).encode(), None)
        if not obj:
            raise LoaderError(f"libbpf cannot open {self._obj_path}: {self._last_error()}")
        self._obj = obj
        self._set_rodata()
        if self._ring_bytes is not None:
            ring = lib.bpf_object__find_map_by_name(obj, b"events")
            lib.bpf_map__set_max_entries(ring, self._ring_bytes)
        if lib.bpf_object__load(obj) != 0:
            raise LoaderError(f"the kernel refused podlock's BPF programs: {self._last_error()}")
        prog = lib.bpf_object__next_program(obj, None)
        while prog:
            name = lib.bpf_program__name(prog).decode()
            link = lib.bpf_program__attach(prog)
            if not link:
                raise LoaderError(f"cannot attach the BPF program {name}: {self._last_error()}")
            self._links.append(link)
            self._progs[name] = lib.bpf_program__fd(prog)
            prog = lib.bpf_object__next_program(obj, prog)
        maps = {
            name: lib.bpf_object__find_map_by_name(obj, name.encode())
            for name in ("events", "procs", "containers", "drops")
        }
        self._fds.update((name, lib.bpf_map__fd(m)) for name, m in maps.items())
        # read through its mapping rather than libbpf's consumer: no C callback per record
        try:
            self._ring = RingReader(self._fds["events"], lib.bpf_map__max_entries(maps["events"]))
        except (OSError, ValueError) as exc:
            raise LoaderError(f"cannot map the BPF ring buffer: {exc}") from None

    def _set_rodata(self) -> None:
        lib = self._lib
        m = lib.bpf_object__next_map(self._obj, None)
        while m:
            if lib.bpf_map__name(m).endswith(b".rodata"):
                size = ctypes.c_size_t()
                ptr = lib.bpf_map__initial_value(m, ctypes.byref(size))
                if not ptr or size.value != 4:
                    raise LoaderError("the BPF object's read-only data is not what podlock expects")
                ctypes.c_uint32.from_address(ptr).value = self._host_mnt_ns
                return
            m = lib.bpf_object__next_map(self._obj, m)
        raise LoaderError("the BPF object has no read-only data section")

    def _last_error(self) -> str:
        err = ctypes.get_errno()
        reason = os.strerror(err) if err else "unknown error"
        detail = next((line for line in reversed(self._log) if line), "")
        return f"{reason}" + (f" ({detail})" if detail else "")

    def close(self) -> None:
        lib = self._lib
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for link in reversed(self._links):
            lib.bpf_link__destroy(link)
        self._links.clear()
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
            self._obj = None
        self._fds.clear()

    # ---- polling -----------------------------------------------------------
    def poll(self, timeout_ms: int, limit: int = POLL_LIMIT) -> list[bytes]:
        """Up to `limit` records: those waiting now, else those that arrive within
        timeout_ms (empty on timeout). File events may have been written without a
        wake-up (see file_wakeup() in podlock.bpf.c): the timeout bounds their delay."""
        assert self._ring is not None, "poll() before start()"
        return self._ring.read(timeout_ms, limit)

    def drops(self) -> int:
        """Records the kernel could not put in the ring buffer, since load."""
        return self._drops_at(0)

    def unlabelled(self) -> int:
        """Processes and container cgroups the kernel left unlabelled, since load: the
        `procs` or `containers` map was full. Their events are not seen."""
        return self._drops_at(1)

    def _drops_at(self, index: int) -> int:
        key = ctypes.c_uint32(index)
        values = (ctypes.c_uint64 * self._ncpus)()
        if self._lib.bpf_map_lookup_elem(self._fds["drops"], ctypes.byref(key), values) != 0:
            return 0
        return sum(values)

    # ---- seeding -------------------------------------------------------------
    def add_container(self, cgroup_id: int, claimed: bool) -> None:
        key = ctypes.c_uint64(cgroup_id)
        value = CgroupC(init_claimed=int(claimed))
        self._lib.bpf_map_update_elem(
            self._fds["containers"], ctypes.byref(key), ctypes.byref(value), BPF_NOEXIST
        )

    def forget_container(self, cgroup_id: int) -> None:
        key = ctypes.c_uint64(cgroup_id)
        self._lib.bpf_map_delete_elem(self._fds["containers"], ctypes.byref(key))

    def label_process(self, pid: int, cgroup_id: int, session: Session, session_id: int) -> None:
        key = ctypes.c_uint32(pid)
        value = LabelC(cgroup_id=cgroup_id, session_id=session_id, session=_SESSION_CODES[session])
        # the kernel's own label, if it made one meanwhile, is the better one
        self._lib.bpf_map_update_elem(
            self._fds["procs"], ctypes.byref(key), ctypes.byref(value), BPF_NOEXIST
        )

    def forget_process(self, pid: int) -> None:
        key = ctypes.c_uint32(pid)
        self._lib.bpf_map_delete_elem(self._fds["procs"], ctypes.byref(key))

    def labelled_pids(self) -> list[int]:
        return self._keys("procs", ctypes.c_uint32)

    def container_cgroups(self) -> list[int]:
        return self._keys("containers", ctypes.c_uint64)

    def _keys(self, name: str, key_type: type[ctypes.c_uint32 | ctypes.c_uint64]) -> list[int]:
        """The keys of a hash map, one syscall per key. The kernel deleting the key we
        stand on restarts the walk at the first key: the walk stops at a key seen
        already, and the next walk makes up for what this one missed."""
        fd, keys = self._fds[name], dict[int, None]()
        get_next = self._lib.bpf_map_get_next_key
        prev, key = None, key_type()
        while get_next(fd, None if prev is None else ctypes.byref(prev), ctypes.byref(key)) == 0:
            if key.value in keys:
                break
            keys[key.value] = None
            prev, key = key, key_type()
        return list(keys)

    def program_stats(self) -> list[ProgStats]:
        """Per-program run time and count (non-zero only with kernel.bpf_stats_enabled=1)."""
        out = []
        for name, fd in self._progs.items():
            info = libbpf.BpfProgInfo()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            if self._lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) == 0:
                out.append(ProgStats(name, info.run_time_ns, info.run_cnt))
        return out
