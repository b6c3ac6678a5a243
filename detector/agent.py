"""`podlock detect`: wires settings, probes, state, rules and outputs together.

    settings -> probes attached -> state seeded from /proc -> pidfile -> poll loop
    (records -> events -> engine -> outputs; lost-record counts; periodic flush
    and sweep; a reload when SIGHUP asked for one)

SIGHUP re-reads the configuration and rules files (see `Reload`); the probes
stay attached. SIGTERM or SIGINT ends the loop: open aggregates and held-back
alerts are written, then the one `finally` detaches the probes, closes the
outputs and removes the pidfile.
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
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from detector import procscan
from detector.decode import DecodeError, RawCgroup, decode
from detector.events import Event, ExecEvent, FileEvent, LostEvents
from detector.fields import EXEC_EVT, EXIT_EVT
from detector.libbpf import LibbpfUnavailable
from detector.loader import POLL_LIMIT, Loader, LoaderError
from detector.metrics import EventCounts
from detector.tracker import Tracker

if TYPE_CHECKING:
    from detector.alerts import Alert
    from detector.audit_sources import Attribution
    from detector.config import DetectorSettings
    from detector.engine import Engine
    from detector.metrics import MetricsServer
    from detector.outputs import Outputs

# events counted by type (metrics): file events by their op, the others by class
_EVENT_TYPE: dict[type, str] = {ExecEvent: EXEC_EVT}
SAMPLE_MASK = 63  # rule-evaluation time: events whose number & SAMPLE_MASK is 0 are timed
POLL_MS = 20  # also bounds the delay of file events the kernel did not wake us for
FLUSH_EVERY_NS = 100_000_000
SWEEP_EVERY_NS = 10_000_000_000  # state of a gone process or container goes within two


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


def seed(loader: Loader, tracker: Tracker, host_mnt_ns: int, engine: Engine | None = None) -> int:
    """Label what already runs, in the kernel maps, the tracker and the engine (sessions
    and parents); returns processes seeded. One that exits meanwhile leaves a label a
    sweep removes."""
    found = procscan.scan(host_mnt_ns)
    refs = {}
    for c in found.containers:
        loader.add_container(c.cgroup_id, c.claimed)
        tracker.add_container(c.cgroup_id, c.ref)
        refs[c.cgroup_id] = c.ref
    for p in found.processes:
        loader.label_process(p.pid, p.cgroup_id, p.session, p.session_id)
        tracker.add_process(p.pid, p.cgroup_id, p.info)
        if engine is not None:
            engine.seed(p.process(refs[p.cgroup_id].container_id))
    return len(found.processes)


class Reload:
    """SIGHUP's work. The configuration and rules files are read and compiled in a
    thread while the loop goes on with the running rules; the agent swaps the new
    engine in between two polls, so every event is evaluated by the old rules or the
    new ones. A failed load leaves `error` (one sentence naming file, line, problem)."""

    def __init__(self, load: Callable[[], tuple[DetectorSettings, Engine]]) -> None:
        self._load = load
        self.result: tuple[DetectorSettings, Engine] | None = None
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="podlock-reload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from detector.config import ConfigError

        try:
            self.result = self._load()
        except ConfigError as exc:
            self.error = str(exc)
        except Exception as exc:  # a reload must never end detection
            self.error = f"internal error while loading ({type(exc).__name__}: {exc})"

    def done(self) -> bool:
        return not self._thread.is_alive()


# Settings an engine is built from; a change in any other one rebuilds the outputs.
_ENGINE_SETTINGS = frozenset(
    {"rules", "rules_files", "priority", "rule_matching", "rate_limit", "hostname"}
)


def _output_settings(settings: DetectorSettings) -> dict[str, Any]:
    return {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if f.name not in _ENGINE_SETTINGS
    }


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
        host: procscan.ProcHost | None = None,
        attribution: Attribution | None = None,
    ) -> None:
        self.loader, self.tracker, self.engine, self.outputs = loader, tracker, engine, outputs
        self.events_log = events_log
        self.host = host or procscan.ProcHost()
        self._next_flush = self._next_sweep = 0
        self.attribution = attribution  # who ran each exec session, when configured
        self.lost_seen = 0
        self.unlabelled_seen = 0  # loader.unlabelled() as last reported
        self.bad_records = 0
        self.processed = 0
        self.counts = EventCounts()  # for metrics
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
            self.emit(self._pending[:], time.time_ns())
            self._pending.clear()  # the same list: step() holds it

    def emit(self, alerts: list[Alert], now: int, final: bool = False) -> None:
        if self.attribution is not None:
            alerts = self.attribution.route(alerts, now, final)
        if alerts:
            self.outputs.emit_many(alerts)

    def step(self, timeout_ms: int) -> int:
        """Poll once and handle what came; returns the wall-clock time it used."""
        records = self.loader.poll(timeout_ms)
        now = time.time_ns()
        newest = now
        tracker = self.tracker
        file_record, handle = tracker.file_record, tracker.handle
        process, pending = self.engine.process, self._pending
        log = self.events_log
        by_type, clock, evaluation_ns, sampled = self.counts.by_type, time.perf_counter_ns, 0, 0
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
                if self.processed & SAMPLE_MASK:
                    alerts = process(event, newest)
                else:  # a clock read costs ~0.3 µs here: one event in 64 is timed
                    started = clock()
                    alerts = process(event, newest)
                    evaluation_ns += clock() - started
                    sampled += 1
                if isinstance(event, FileEvent):
                    by_type[event.op._value_] += 1
                else:
                    by_type[_EVENT_TYPE.get(event.__class__, EXIT_EVT)] += 1
                if alerts:
                    pending += alerts
                    if len(pending) >= self.BATCH:
                        self._write()
            elif isinstance(raw, RawCgroup) and tracker.containers.get(raw.hdr.cgroup_id) is None:
                self.loader.forget_container(raw.hdr.cgroup_id)  # the kernel guessed wrong
        self.counts.evaluation_ns += evaluation_ns
        self.counts.evaluations += sampled
        lost = self.loader.drops() + self.bad_records
        if lost > self.lost_seen:
            self.deliver(LostEvents(time_ns=now, count=lost - self.lost_seen), now)
            self.lost_seen = lost
        self._write()
        # a full slice: more records wait, so time-driven work runs on their clock too
        self._clock = newest if len(records) >= POLL_LIMIT else now
        return now

    def flush(self, now: int) -> None:
        self.emit(self.engine.flush(min(now, self._clock)), now)

    def housekeeping(self, now: int) -> None:
        """Time-driven work between polls: flush every FLUSH_EVERY_NS, sweep every
        SWEEP_EVERY_NS."""
        if now >= self._next_flush:
            self.flush(now)
            self._next_flush = now + FLUSH_EVERY_NS
        if now >= self._next_sweep:
            self.sweep()
            self._next_sweep = now + SWEEP_EVERY_NS
            unlabelled = self.loader.unlabelled()
            if unlabelled > self.unlabelled_seen:
                _say(
                    f"{unlabelled - self.unlabelled_seen} container processes or cgroups left "
                    "unlabelled: the kernel's procs or containers map is full, their events "
                    "are not seen"
                )
                self.unlabelled_seen = unlabelled

    def sweep(self) -> None:
        """Forget processes and containers that are gone, in the tracker, the engine and
        the kernel's maps (whose own deletions, at exit and cgroup removal, miss a process
        that exited while being seeded); the engine also drops idle rate-limit buckets.
        User-space state goes a sweep after it is first found gone (records still in the
        ring buffer find it); a label in the kernel at once (no record depends on it)."""
        loader = self.loader
        labelled, claimed = loader.labelled_pids(), loader.container_cgroups()
        # listed after reading the maps: what the listings lack is gone
        live_cgroups, live_pids = self.host.live_cgroups(), procscan.live_pids()
        self.tracker.prune(live_cgroups, live_pids.__contains__)
        for cgroup_id in claimed:
            if cgroup_id not in live_cgroups:
                loader.forget_container(cgroup_id)
        for pid in labelled:
            if pid not in live_pids:
                loader.forget_process(pid)
        self.engine.sweep(time.time_ns(), live_pids.__contains__)

    def table_sizes(self) -> dict[str, int]:
        """Entries in every long-lived table, the kernel's maps included."""
        return {
            "bpf.procs": len(self.loader.labelled_pids()),
            "bpf.containers": len(self.loader.container_cgroups()),
            **self.tracker.table_sizes(),
            **self.engine.table_sizes(),
        }

    def shutdown(self, now: int) -> None:
        """Write everything still pending: open copies, held-back alerts, lost counts."""
        self.emit(self.engine.shutdown(now), now, final=True)


def _say(message: str) -> None:
    print(f"podlock detect: {message}", file=sys.stderr, flush=True)


def _write_pidfile(path: str) -> None:
    """Written whole or not at all: `kill -1 $(cat PIDFILE)` never reads half a pid."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _serve_metrics(bind: str, pipeline: Pipeline) -> MetricsServer:
    """The /metrics endpoint, reading the pipeline's live objects at each scrape."""
    from detector.metrics import MetricsServer, Sources

    return MetricsServer(
        bind,
        Sources(
            events=lambda: pipeline.counts,
            outputs=lambda: pipeline.outputs,
            kernel_drops=pipeline.loader.drops,
            user_drops=lambda: pipeline.bad_records,
            tracked_processes=lambda: len(pipeline.tracker.procs),
            tracked_containers=lambda: len(pipeline.tracker.containers),
        ),
    )


def run(args: argparse.Namespace) -> int:
    from detector.config import ConfigError, load_detector_settings

    def load_settings() -> DetectorSettings:
        loaded = load_detector_settings(args.config, list(args.rules))
        if not (args.audit_log or args.audit_webhook_bind):
            return loaded
        audit = dataclasses.replace(  # the flags win over the config file
            loaded.k8s_audit,
            log_file=args.audit_log or loaded.k8s_audit.log_file,
            webhook_bind=args.audit_webhook_bind or loaded.k8s_audit.webhook_bind,
        )
        return dataclasses.replace(loaded, k8s_audit=audit)

    try:
        settings = load_settings()
        if args.metrics_bind:
            from detector.metrics import parse_bind

            parse_bind(args.metrics_bind)  # a malformed flag fails before the probes load
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
    reload_asked: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        (reload_asked if signum == signal.SIGHUP else stopping).append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    metadata = metadata_from_env()
    pidfile: str | None = args.pidfile
    events_log: TextIO | None = None
    attribution: Attribution | None = None  # its sources are read once, not on reload
    pipeline: Pipeline | None = None  # holds the outputs in force once it exists
    metrics: MetricsServer | None = None
    try:
        if settings.k8s_audit.enabled:
            from detector.audit_sources import Attribution

            attribution = Attribution(settings.k8s_audit, metadata.lookup)
            attribution.start()
        engine = Engine.from_settings(settings, metadata)
        boot_to_wall = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        host = procscan.ProcHost()
        tracker = Tracker(host=host, boot_to_wall_ns=boot_to_wall)
        seeded = seed(loader, tracker, host_mnt_ns, engine)
        if log_path := os.environ.get("PODLOCK_EVENTS_LOG"):
            events_log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        pipeline = Pipeline(loader, tracker, engine, outputs, events_log, host, attribution)
        if args.metrics_bind:
            metrics = _serve_metrics(args.metrics_bind, pipeline)
        if pidfile:
            _write_pidfile(pidfile)
        _say(f"probes attached, {seeded} container processes already running")

        def load_engine() -> tuple[DetectorSettings, Engine]:
            fresh = load_settings()
            return fresh, Engine.from_settings(fresh, metadata)

        reload: Reload | None = None
        while not stopping:
            now = pipeline.step(POLL_MS)
            pipeline.housekeeping(now)
            if reload is None and reload_asked:
                reload_asked.clear()  # signals meanwhile are one more reload after this
                reload = Reload(load_engine)
            elif reload is not None and reload.done():
                settings = _take_reload(reload, settings, pipeline, args.json, now)
                reload = None
        pipeline.shutdown(time.time_ns())
        return 0
    except ConfigError as exc:  # --metrics-bind cannot listen
        return _fail(str(exc))
    finally:
        if metrics is not None:
            metrics.close()
        loader.close()
        if attribution is not None:
            attribution.close()
        (outputs if pipeline is None else pipeline.outputs).close()
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


def _take_reload(
    reload: Reload, running: DetectorSettings, pipeline: Pipeline, json_stdout: bool, now: int
) -> DetectorSettings:
    """Swap in a finished reload's engine (and outputs, if their settings changed), or
    keep everything as it runs and say why. Returns the settings now in force."""
    from detector.config import ConfigError
    from detector.outputs import build_outputs

    if reload.result is None:
        _say(f"reload failed, the running configuration and rules stay: {reload.error}")
        return running
    settings, engine = reload.result
    if _output_settings(settings) != _output_settings(running):
        try:
            outputs = build_outputs(settings, json_stdout=json_stdout)
        except ConfigError as exc:
            _say(f"reload failed, the running configuration and rules stay: {exc}")
            return running
        pipeline.outputs.close()
        pipeline.outputs = outputs
    pipeline.emit(engine.adopt(pipeline.engine, now), now)
    pipeline.engine = engine
    _say(f"reloaded {len(settings.rules_files)} rules files, {len(engine.rules)} rules in force")
    return settings
