"""`podlock detect`: wires settings, probes, state, rules and outputs together.

    settings -> probes attached -> state seeded from /proc -> pidfile -> poll loop
    (records -> events -> engine -> outputs; lost-record counts; periodic flush)

SIGTERM or SIGINT ends the loop; the one `finally` detaches the probes, closes
the outputs and removes the pidfile.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import os
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from detector import procscan
from detector.decode import DecodeError, RawCgroup, decode
from detector.events import Event, LostEvents
from detector.libbpf import LibbpfUnavailable
from detector.loader import POLL_LIMIT, Loader, LoaderError
from detector.tracker import Tracker

if TYPE_CHECKING:
    from detector.alerts import Alert
    from detector.engine import Engine
    from detector.outputs import Outputs

POLL_MS = 20  # also bounds the delay of file events the kernel did not wake us for
FLUSH_EVERY_NS = 100_000_000


def _fail(message: str) -> int:
    print(f"podlock detect: {message}", file=sys.stderr)
    return 1


def event_json(event: Event) -> str:
    """One event as a JSON line (the PODLOCK_EVENTS_LOG debugging stream)."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple) and hasattr(value, "_asdict"):  # the NamedTuple events
            return {k: plain(v) for k, v in value._asdict().items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    body = plain(event)
    body["type"] = type(event).__name__
    return json.dumps(body, separators=(",", ":"))


def seed(loader: Loader, tracker: Tracker, host_mnt_ns: int) -> int:
    """Label what already runs, in the kernel maps and the tracker; returns processes seeded."""
    found = procscan.scan(host_mnt_ns)
    for c in found.containers:
        loader.add_container(c.cgroup_id, c.claimed)
        tracker.add_container(c.cgroup_id, c.ref)
    for p in found.processes:
        loader.label_process(p.pid, p.cgroup_id, p.session, p.session_id)
        tracker.add_process(p.pid, p.cgroup_id, p.info)
    return len(found.processes)


class Pipeline:
    """records -> events -> alerts -> outputs, one poll at a time (the agent's loop body;
    the benchmark drives it too). Alerts are written in batches of up to BATCH, at the
    latest when the poll's records are done: one write per batch, not per alert."""

    BATCH = 256

    def __init__(
        self,
        loader: Loader,
        tracker: Tracker,
        engine: Engine,
        outputs: Outputs,
        events_log: TextIO | None = None,
    ) -> None:
        self.loader, self.tracker, self.engine, self.outputs = loader, tracker, engine, outputs
        self.events_log = events_log
        self.lost_seen = 0
        self.bad_records = 0
        self.processed = 0
        self._pending: list[Alert] = []
        self._clock = 1 << 63  # the engine's time after the last step (see step)

    def deliver(self, event: Event, now: int) -> None:
        """One event through the engine (step() does the same inline, per record)."""
        if self.events_log is not None:
            self.events_log.write(event_json(event) + "\n")
            self.events_log.flush()
        alerts = self.engine.process(event, now)
        if alerts:
            self._pending += alerts
            if len(self._pending) >= self.BATCH:
                self._write()

    def _write(self) -> None:
        if self._pending:
            self.outputs.emit_many(self._pending[:])
            self._pending.clear()  # the same list: step() holds it

    def step(self, timeout_ms: int) -> int:
        """Poll once and handle what came; returns the wall-clock time it used."""
        records = self.loader.poll(timeout_ms)
        now = time.time_ns()
        newest = now
        tracker = self.tracker
        file_record, handle = tracker.file_record, tracker.handle
        process, pending = self.engine.process, self._pending
        log = self.events_log
        for record in records:
            raw = None
            try:
                event: Event | None = file_record(record)  # the common kind, directly
                if event is None:
                    raw = decode(record)
                    event = handle(raw)
            except DecodeError:
                self.bad_records += 1
                continue
            if event is not None:
                self.processed += 1
                if log is not None:
                    log.write(event_json(event) + "\n")
                    log.flush()
                # the engine's clock is the event's own time: records that waited in the
                # ring (the agent was off the CPU) must not make a copy look idle
                newest = min(now, event.time_ns)
                alerts = process(event, newest)
                if alerts:
                    pending += alerts
                    if len(pending) >= self.BATCH:
                        self._write()
            elif isinstance(raw, RawCgroup) and tracker.containers.get(raw.hdr.cgroup_id) is None:
                self.loader.forget_container(raw.hdr.cgroup_id)  # the kernel guessed wrong
        lost = self.loader.drops() + self.bad_records
        if lost > self.lost_seen:
            self.deliver(LostEvents(time_ns=now, count=lost - self.lost_seen), now)
            self.lost_seen = lost
        self._write()
        # a full slice: more records wait, so time-driven work runs on their clock too
        self._clock = newest if len(records) >= POLL_LIMIT else now
        return now

    def flush(self, now: int) -> None:
        self.outputs.emit_many(self.engine.flush(min(now, self._clock)))

    def shutdown(self, now: int) -> None:
        """Write everything still pending: open copies, held-back alerts, lost counts."""
        self.outputs.emit_many(self.engine.shutdown(now))


def run(args: argparse.Namespace) -> int:
    from detector.config import ConfigError, load_detector_settings

    try:
        settings = load_detector_settings(args.config, list(args.rules))
    except ConfigError as exc:
        return _fail(str(exc))
    if os.geteuid() != 0:
        return _fail("loading eBPF probes needs root (CAP_BPF, CAP_PERFMON); run it as root.")

    from detector.engine import Engine
    from detector.k8s import metadata_from_env
    from detector.outputs import build_outputs

    try:  # opens the output file: an unwritable path is a configuration error
        outputs = build_outputs(settings, json_stdout=args.json)
    except ConfigError as exc:
        return _fail(str(exc))
    host_mnt_ns = procscan.host_mnt_ns()
    try:
        loader = Loader(host_mnt_ns)
    except LibbpfUnavailable as exc:
        outputs.close()
        return _fail(f"{exc}; install libbpf1.")
    try:
        loader.start()
    except LoaderError as exc:
        outputs.close()
        return _fail(str(exc))

    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    metadata = metadata_from_env()
    pidfile: str | None = args.pidfile
    events_log: TextIO | None = None
    try:
        engine = Engine.from_settings(settings, metadata)
        boot_to_wall = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        tracker = Tracker(host=procscan.ProcHost(), boot_to_wall_ns=boot_to_wall)
        seeded = seed(loader, tracker, host_mnt_ns)
        if log_path := os.environ.get("PODLOCK_EVENTS_LOG"):
            events_log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        if pidfile:
            with open(pidfile, "w", encoding="utf-8") as fh:
                fh.write(f"{os.getpid()}\n")
        print(
            f"podlock detect: probes attached, {seeded} container processes already running",
            file=sys.stderr,
            flush=True,
        )

        pipeline = Pipeline(loader, tracker, engine, outputs, events_log)
        next_flush = 0
        while not stopping:
            now = pipeline.step(POLL_MS)
            if now >= next_flush:
                pipeline.flush(now)
                next_flush = now + FLUSH_EVERY_NS
        pipeline.shutdown(time.time_ns())
        return 0
    finally:
        loader.close()
        outputs.close()
        close = getattr(metadata, "close", None)
        if callable(close):
            close()
        if events_log is not None:
            events_log.close()
        if pidfile:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pidfile)
        for signum, handler in old.items():
            signal.signal(signum, handler)
