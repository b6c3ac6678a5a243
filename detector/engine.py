"""The rule engine: decoded events in, alerts out. Pure: the caller gives the time.

Per event it does, in order: update the small session/process state, run the
rules compiled for the event's type (rules that cannot match a type are not in
its list), turn matches into alerts — or fold them into an open aggregate group —
then apply the rate limit and attribute lost events to the next alert.

Time-driven work (aggregate groups that went idle, held-back alerts due for
release, lost events no alert carried) happens in `flush`, and also from
`process` every 100 ms of the caller's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from detector.alerts import Alert, FieldValue, Priority, format_value, join_items
from detector.condition.ast import And, BCompare, BExists, Node, Not, Or
from detector.condition.compiler import Pred, compile_condition, extractor
from detector.config import DetectorSettings, RateLimit
from detector.events import (
    Event,
    ExecEvent,
    ExitEvent,
    FileEvent,
    FileOp,
    LostEvents,
    Process,
    Session,
    SessionRef,
)
from detector.fields import (
    EVT_TYPES,
    EXEC_EVT,
    EXIT_EVT,
    FIELDS,
    PER_PROCESS_FIELDS,
    Extract,
    Fixed,
)
from detector.k8s import ContainerMeta, MetadataSource
from detector.ratelimit import RateLimiter
from detector.rules import Rule, RuleSet
from detector.sessions import ProcessTable, SessionTable

DROP_RULE = "podlock internal: events lost"
DROP_PRIORITY = Priority.WARNING
_CHECK_EVERY_NS = 100_000_000
_DROP_GRACE_NS = 1_000_000_000
_PLAIN = frozenset({str, int})  # values %s prints as format_value would
_DISTINCT_CAP = 65536  # distinct values an aggregate group remembers for its count
# open aggregate groups: past this, the oldest is closed early (its alert is emitted, not lost)
MAX_GROUPS = 4096
# processes with cached rule lists and output fields (_proc_rules): an entry goes when
# its process exits; past this many (exits lost), the cache is emptied
_CACHE_CAP = 4096


@dataclass(slots=True)
class _Compiled:
    """One rule, specialised for one event type."""

    rule: Rule
    pred: Pred | None  # None: the type alone satisfies the condition
    fixed: dict[str, FieldValue]
    dynamic_keys: tuple[str, ...]
    dynamic_getters: tuple[Extract, ...]
    parts: tuple[tuple[bool, str], ...]  # (is a field key, text)
    # the output as a %-template over the values of out_keys (one C-level format per alert)
    template: str = ""
    out_keys: tuple[str, ...] = ()
    collect: Extract | Fixed | None = None
    union: tuple[tuple[str, Extract | Fixed], ...] = ()
    # output fields that depend on the process only, and their values per process
    proc_keys: tuple[str, ...] = ()
    proc_getters: tuple[Extract, ...] = ()
    # the condition's conjuncts that read only per-process fields; None: there are none.
    # Decided once per process (see Engine._rules_for), not per event.
    proc_pred: Pred | None = None


@dataclass(slots=True)
class _ProcRules:
    """For one process: the rules of each event type whose per-process part of the
    condition holds, and each rule's per-process output fields (valid while the engine
    state and the metadata are the same)."""

    proc: Process
    state: int
    meta: ContainerMeta | None
    lists: dict[int, tuple[_Compiled, ...]]  # id(the type's rule list) -> those rules
    memos: dict[int, _ProcMemo]  # id(a _Compiled) -> its output fields for this process


def _conjuncts(node: Node) -> list[Node]:
    if isinstance(node, And):
        return [leaf for item in node.items for leaf in _conjuncts(item)]
    return [node]


def _per_process(node: Node) -> bool:
    """True when the node reads no field that can change between a process's events."""
    if isinstance(node, BCompare | BExists):
        return node.field.name in PER_PROCESS_FIELDS
    if isinstance(node, And | Or):
        return all(_per_process(item) for item in node.items)
    if isinstance(node, Not):
        return _per_process(node.item)
    return True  # a constant


@dataclass(slots=True)
class _ProcMemo:
    """One rule's per-process output fields for one process, and its output template with
    those already filled in (kept in the process's _ProcRules, valid as long as it is)."""

    values: dict[str, FieldValue]
    base: dict[str, FieldValue]  # the rule's fixed fields and these values, merged once
    template: str  # the rest of the fields as %s
    keys: tuple[str, ...]  # ... these


@dataclass(slots=True)
class _Group:
    compiled: _Compiled
    container_id: str
    key_id: int
    time_ns: int  # event time of the first match
    opened_ns: int  # caller's clock
    last_ns: int
    fields: dict[str, FieldValue]
    session: SessionRef | None
    items: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    count: int = 0
    unions: dict[str, set[str]] = field(default_factory=dict)


@dataclass(slots=True)
class _Held:
    """A held-back alert's makings, kept so it can be released later. Its fields are
    taken when it is held: at release the process may have exited, the state moved on."""

    compiled: _Compiled
    time_ns: int
    fields: dict[str, FieldValue]
    session: SessionRef | None


class Engine:
    def __init__(
        self,
        rules: RuleSet,
        metadata: MetadataSource,
        *,
        hostname: str = "",
        min_priority: Priority = Priority.DEBUG,
        rule_matching: Literal["all", "first"] = "all",
        rate_limit: RateLimit | None = None,
    ) -> None:
        rate_limit = rate_limit or RateLimit()
        self.hostname = hostname
        self._lookup = metadata.lookup
        self._sessions = SessionTable()
        self._procs = ProcessTable()
        self._num = 0
        self._state = 0  # bumped when sessions or parents change (exec, exit)
        self._meta_cid, self._meta_num = "", -1  # see meta()
        self._meta: ContainerMeta | None = None
        self._drops = 0
        self._drops_since_ns = 0
        self._min_priority = min_priority
        self._first_only = rule_matching == "first"
        self._limiter: RateLimiter[tuple[str, str], _Held] | None = None
        if rate_limit.enabled and rate_limit.rate > 0:
            self._limiter = RateLimiter(
                rate_limit.rate, rate_limit.max_burst, int(rate_limit.summary_interval_s * 1e9)
            )
        # open until their process exits, they go idle or MAX_GROUPS (oldest first)
        self._groups: dict[tuple[str, str, int], _Group] = {}
        self.groups_closed_early = 0  # by MAX_GROUPS
        # by pid, see _rules_for: until the process exits, or _CACHE_CAP
        self._proc_rules: dict[int, _ProcRules] = {}
        self._rate_limit = rate_limit
        self._next_check_ns = 0
        self.rules = tuple(r for r in rules.enabled if r.priority.at_least(min_priority))
        self.warnings = list(rules.warnings)
        by_type = {t: self._compile_for(t) for t in EVT_TYPES}
        for rule in self.rules:
            if not any(c.rule is rule for cs in by_type.values() for c in cs):
                self.warnings.append(f"rule '{rule.name}' ({rule.origin}) can never match")
        # keyed by the op's value string: hashing an Enum member runs Python code
        self._file_rules = {op.value: by_type[op.value] for op in FileOp}
        self._exec_rules = by_type[EXEC_EVT]
        self._exit_rules = by_type[EXIT_EVT]
        self.events = 0
        self.alerts = 0

    @classmethod
    def from_settings(cls, settings: DetectorSettings, metadata: MetadataSource) -> Engine:
        return cls(
            settings.rules,
            metadata,
            hostname=settings.hostname,
            min_priority=settings.priority,
            rule_matching=settings.rule_matching,
            rate_limit=settings.rate_limit,
        )

    def adopt(self, old: Engine, now_ns: int) -> list[Alert]:
        """Take over a running engine's state (a reload): sessions, parents, open
        aggregate groups (each keeps the rule it was opened under), held-back alerts and
        lost-event counts carry on under this engine's rules. Returns what the old engine
        owes now: its held-back alerts, when the rate limit changed."""
        out: list[Alert] = []
        if old._limiter is not None:
            if self._limiter is not None and self._rate_limit == old._rate_limit:
                self._limiter = old._limiter
            else:
                old._release(old._limiter.due(now_ns + 10**18), out)
        self._sessions, self._procs, self._groups = old._sessions, old._procs, old._groups
        self._num, self._state = old._num, old._state + 1
        self._drops, self._drops_since_ns = old._drops, old._drops_since_ns
        self._next_check_ns = old._next_check_ns
        self.events, self.alerts = old.events, old.alerts
        self.groups_closed_early = old.groups_closed_early
        return out

    def seed(self, proc: Process) -> None:
        """A process that ran before the agent started (read from /proc): remembered as
        if its exec had been seen, so its children's parent fields and its session's
        command are known."""
        self._procs.remember(proc)
        self._sessions.leader_exec(proc, 0)  # its start was not seen: never attributed
        self._state += 1

    def sweep(self, now_ns: int, alive: Callable[[int], bool] | None = None) -> None:
        """Slow housekeeping (the agent calls it every few seconds): rate-limit buckets
        that refilled and hold nothing are dropped, as if never made; with `alive`,
        sessions and processes whose exit was never seen (a lost record) too."""
        if self._limiter is not None:
            self._limiter.prune(now_ns)
        if alive is not None:
            self._sessions.prune(alive)
            self._procs.prune(alive)

    def evictions(self) -> dict[str, int]:
        """What each table's bound has pushed out since start (for metrics)."""
        return {
            "engine.sessions": self._sessions.evicted,
            "engine.processes": self._procs.evicted,
            "engine.groups": self.groups_closed_early,
            "engine.rate_held": self._limiter.evicted_held if self._limiter is not None else 0,
        }

    def table_sizes(self) -> dict[str, int]:
        """Entries in each long-lived table (for metrics and the soak benchmark)."""
        return {
            "engine.sessions": len(self._sessions),
            "engine.processes": len(self._procs),
            "engine.groups": len(self._groups),
            "engine.rate_buckets": len(self._limiter) if self._limiter is not None else 0,
            "engine.process_cache": len(self._proc_rules),
        }

    def rules_for(self, evt_type: str) -> tuple[str, ...]:
        """Names of the rules an event of this type meets (the index), for tests/tools."""
        table = {EXEC_EVT: self._exec_rules, EXIT_EVT: self._exit_rules}
        table.update(self._file_rules)
        return tuple(c.rule.name for c in table[evt_type])

    # --- compilation ------------------------------------------------------------------------

    def _compile_for(self, evt_type: str) -> tuple[_Compiled, ...]:
        out = []
        for rule in self.rules:
            # split a conjunction: the per-process part is evaluated once per process
            terms = _conjuncts(rule.condition)
            proc_pred = compile_condition(
                And(tuple(n for n in terms if _per_process(n))), evt_type, self
            )
            pred = compile_condition(
                And(tuple(n for n in terms if not _per_process(n))), evt_type, self
            )
            if pred is False or proc_pred is False:
                continue
            fixed: dict[str, FieldValue] = {}
            dynamic: list[tuple[str, Extract]] = []
            per_proc_out: list[tuple[str, Extract]] = []
            for key, name, arg in rule.output_refs:
                fdef = FIELDS[name]
                if fdef.output_only:
                    fixed[key] = None  # filled when the alert is made
                    continue
                get = extractor(fdef, arg, evt_type, self)
                if isinstance(get, Fixed):
                    fixed[key] = get.value
                elif name in PER_PROCESS_FIELDS:
                    per_proc_out.append((key, get))
                else:
                    dynamic.append((key, get))
            parts = tuple(
                (True, f"{p[0]}[{p[1]}]" if p[1] is not None else p[0])
                if isinstance(p, tuple)
                else (False, p)
                for p in rule.output.parts
            )
            compiled = _Compiled(
                rule,
                None if pred is True else pred,
                fixed,
                tuple(k for k, _ in dynamic),
                tuple(g for _, g in dynamic),
                parts,
                template="".join("%s" if f else t.replace("%", "%%") for f, t in parts),
                out_keys=tuple(t for f, t in parts if f),
                proc_keys=tuple(k for k, _ in per_proc_out),
                proc_getters=tuple(g for _, g in per_proc_out),
                proc_pred=None if proc_pred is True else proc_pred,
            )
            agg = rule.aggregate
            if agg is not None:
                compiled.collect = extractor(FIELDS[agg.collect[0]], agg.collect[1], evt_type, self)
                compiled.union = tuple(
                    (name if arg is None else f"{name}[{arg}]",
                     extractor(FIELDS[name], arg, evt_type, self))
                    for name, arg in agg.union
                )  # fmt: skip
            out.append(compiled)
        return tuple(out)

    # --- FieldEnv: state some fields read ----------------------------------------------------

    def meta(self, container_id: str) -> ContainerMeta | None:
        # One lookup per event and container: an alert reads several k8s fields.
        if container_id == self._meta_cid and self._meta_num == self._num:
            return self._meta
        meta = self._lookup(container_id) if container_id else None
        self._meta_cid, self._meta_num, self._meta = container_id, self._num, meta
        return meta

    def is_probe(self, proc: Process) -> bool:
        if proc.session is not Session.EXEC:
            return False
        info = self._sessions.get(proc.session_id)
        if info is None:
            return False
        if info.probe is None:
            meta = self.meta(info.container_id)
            if meta is None:
                return False  # decided once the pod is known
            info.probe = info.argv in meta.probe_commands
        return info.probe

    def parent(self, ppid: int) -> Process | None:
        return self._procs.get(ppid)

    def session_cmdline(self, proc: Process) -> tuple[str, ...] | None:
        if proc.session is not Session.EXEC:
            return None
        info = self._sessions.get(proc.session_id)
        if info is not None:
            return info.argv
        return proc.cmdline if proc.pid == proc.session_id else None

    def event_number(self) -> int:
        return self._num

    def session_ref(self, proc: Process) -> SessionRef | None:
        """The exec session a process belongs to, for its alerts (None: not in one)."""
        if proc.session is not Session.EXEC:
            return None
        info = self._sessions.get(proc.session_id)
        if info is not None:
            return info.ref
        return SessionRef(proc.container_id, proc.session_id, (), 0)  # its start was not seen

    # --- events ---------------------------------------------------------------------------

    def process(self, event: Event, now_ns: int) -> list[Alert]:
        cls = type(event)
        if cls is FileEvent:
            rules = self._file_rules[event.op._value_]  # type: ignore[union-attr]
        elif cls is ExecEvent:
            proc = event.proc  # type: ignore[union-attr]
            self._procs.remember(proc)
            self._sessions.leader_exec(proc, event.time_ns)
            self._state += 1
            rules = self._exec_rules
        elif cls is ExitEvent:
            self._state += 1
            rules = self._exit_rules
        elif cls is LostEvents:
            if not self._drops:
                self._drops_since_ns = now_ns
            self._drops += cast(LostEvents, event).count
            return self._expire(now_ns) if now_ns >= self._next_check_ns else []
        else:
            return []  # an event kind this engine does not know yet
        self._num += 1
        self.events += 1
        out: list[Alert] = []
        for c in self._rules_for(rules, event):
            if c.pred is None or c.pred(event):
                if c.collect is not None:
                    self._fold(c, event, now_ns, out)
                else:
                    alert = self._alert_for(c, event, now_ns)
                    if alert is not None:
                        out.append(alert)
                if self._first_only:
                    break
        if cls is ExitEvent:
            self._exited(event.proc, now_ns, out)  # type: ignore[union-attr]
        if now_ns >= self._next_check_ns:
            out.extend(self._expire(now_ns))
        return out

    def _rules_for(self, rules: tuple[_Compiled, ...], event: Any) -> tuple[_Compiled, ...]:
        """The rules whose per-process conditions the event's process meets, decided on
        its first event and reused for the next ones (a storm is one process's events)."""
        proc = event.proc
        meta = self.meta(proc.container_id)
        # checked by identity: the tracker hands out one Process value per process
        hit = self._proc_rules.get(proc.pid)
        if hit is None or hit.proc is not proc or hit.state != self._state or hit.meta is not meta:
            if len(self._proc_rules) >= _CACHE_CAP:
                self._proc_rules.clear()
            hit = self._proc_rules[proc.pid] = _ProcRules(proc, self._state, meta, {}, {})
        met = hit.lists.get(id(rules))
        if met is None:
            # only per-process fields are read: the event stands for its process here
            met = tuple(c for c in rules if c.proc_pred is None or c.proc_pred(event))
            hit.lists[id(rules)] = met
        return met

    def flush(self, now_ns: int) -> list[Alert]:
        """Emit what is due by time: idle aggregates, held-back alerts, lost events."""
        return self._expire(now_ns)

    def shutdown(self, now_ns: int) -> list[Alert]:
        """Emit everything pending (open aggregates first), e.g. on SIGTERM."""
        out: list[Alert] = []
        for key in list(self._groups):
            self._close(self._groups.pop(key), now_ns, out)
        if self._limiter is not None:
            self._release(self._limiter.due(now_ns + 10**18), out)
        self._drop_alert(now_ns, out, force=True)
        return out

    # --- alerts ---------------------------------------------------------------------------

    def _proc_memo(self, c: _Compiled, event: Any) -> _ProcMemo | None:
        if not c.proc_getters:
            return None
        proc = event.proc
        # _rules_for made the process's entry for this very event
        cached = self._proc_rules[proc.pid].memos
        hit = cached.get(id(c))
        if hit is not None:
            return hit
        values = dict(zip(c.proc_keys, [get(event) for get in c.proc_getters], strict=True))
        template: list[str] = []
        keys: list[str] = []
        for is_field, text in c.parts:
            if not is_field:
                template.append(text.replace("%", "%%"))
            elif text in values:
                template.append(format_value(values[text]).replace("%", "%%"))
            else:
                template.append("%s")
                keys.append(text)
        base = c.fixed | values
        memo = cached[id(c)] = _ProcMemo(values, base, "".join(template), tuple(keys))
        return memo

    def _extract(
        self, c: _Compiled, event: Any, memo: _ProcMemo | None = None
    ) -> dict[str, FieldValue]:
        if c.proc_getters:
            memo = memo or self._proc_memo(c, event)
            assert memo is not None
            fields = memo.base.copy()
        else:
            fields = c.fixed.copy()
        fields.update(zip(c.dynamic_keys, [get(event) for get in c.dynamic_getters], strict=True))
        return fields

    def _alert_for(self, c: _Compiled, event: Any, now_ns: int) -> Alert | None:
        held = 0
        memo = self._proc_memo(c, event)
        if self._limiter is not None:
            key = (c.rule.name, event.proc.container_id)
            admitted = self._limiter.admit(key, now_ns)
            if admitted is None:
                fields = self._extract(c, event, memo)
                session = self.session_ref(event.proc)
                self._limiter.hold(key, now_ns, _Held(c, event.time_ns, fields, session))
                return None
            held = admitted
        fields = self._extract(c, event, memo)
        return self._finish(c, event.time_ns, fields, held, memo, self.session_ref(event.proc))

    def _finish(
        self,
        c: _Compiled,
        time_ns: int,
        fields: dict[str, FieldValue],
        held: int,
        memo: _ProcMemo | None = None,
        session: SessionRef | None = None,
    ) -> Alert:
        fields["podlock.suppressed"] = held
        fields["podlock.drops"] = self._drops
        self._drops = 0
        template, keys = (memo.template, memo.keys) if memo else (c.template, c.out_keys)
        get = fields.__getitem__
        output = template % tuple(
            [v if (v := get(k)).__class__ in _PLAIN else format_value(v) for k in keys]
        )
        rule = c.rule
        self.alerts += 1
        return Alert(
            time_ns, rule.name, rule.priority, output, fields, rule.tags, self.hostname, session
        )

    def _release(self, due: list[tuple[tuple[str, str], int, _Held]], out: list[Alert]) -> None:
        for _key, others, held in due:
            out.append(
                self._finish(held.compiled, held.time_ns, held.fields, others, None, held.session)
            )

    # --- aggregation ------------------------------------------------------------------------

    def _fold(self, c: _Compiled, event: Any, now_ns: int, out: list[Alert]) -> None:
        proc = event.proc
        agg = c.rule.aggregate
        assert agg is not None
        key_id = proc.pid if agg.by == "process" else proc.session_id
        key = (c.rule.name, proc.container_id, key_id)
        group = self._groups.get(key)
        if group is None:
            group = _Group(
                c, proc.container_id, key_id, event.time_ns, now_ns, now_ns,
                self._extract(c, event), self.session_ref(proc),
            )  # fmt: skip
            self._groups[key] = group
            if len(self._groups) > MAX_GROUPS:  # dicts keep insertion order: oldest first
                oldest = next(iter(self._groups))
                self._close(self._groups.pop(oldest), now_ns, out)
                self.groups_closed_early += 1
        group.last_ns = now_ns
        collect = c.collect
        assert collect is not None
        value = format_value(collect.value if isinstance(collect, Fixed) else collect(event))
        if value not in group.seen:
            if len(group.seen) < _DISTINCT_CAP:
                group.seen.add(value)
            group.count += 1
            if len(group.items) < agg.max_items:
                group.items.append(value)
        for name, get in c.union:
            v = format_value(get.value if isinstance(get, Fixed) else get(event))
            group.unions.setdefault(name, set()).add(v)

    def _close(self, group: _Group, now_ns: int, out: list[Alert]) -> None:
        c = group.compiled
        fields = group.fields
        fields["podlock.agg.count"] = group.count
        fields["podlock.agg.items"] = join_items(group.items)  # a comma in a name is escaped
        for name, values in group.unions.items():
            fields[name] = join_items(sorted(values))
        held = 0
        if self._limiter is not None:
            key = (c.rule.name, group.container_id)
            admitted = self._limiter.admit(key, now_ns)
            if admitted is None:
                self._limiter.hold(key, now_ns, _Held(c, group.time_ns, fields, group.session))
                return
            held = admitted
        out.append(self._finish(c, group.time_ns, fields, held, None, group.session))

    def _exited(self, proc: Process, now_ns: int, out: list[Alert]) -> None:
        pid = proc.pid
        if self._groups:
            for key in [k for k, g in self._groups.items() if g.key_id == pid]:
                if key[1] == proc.container_id:
                    self._close(self._groups.pop(key), now_ns, out)
        if proc.session is Session.EXEC and pid == proc.session_id:
            self._sessions.end(pid)
        self._procs.forget(pid)
        self._proc_rules.pop(pid, None)

    # --- time -------------------------------------------------------------------------------

    def _expire(self, now_ns: int) -> list[Alert]:
        self._next_check_ns = now_ns + _CHECK_EVERY_NS
        out: list[Alert] = []
        if self._groups:
            for key, g in list(self._groups.items()):
                agg = g.compiled.rule.aggregate
                assert agg is not None
                if now_ns - g.last_ns >= agg.idle_ns or now_ns - g.opened_ns >= agg.max_open_ns:
                    del self._groups[key]
                    self._close(g, now_ns, out)
        if self._limiter is not None:
            self._release(self._limiter.due(now_ns), out)
        self._drop_alert(now_ns, out)
        return out

    def _drop_alert(self, now_ns: int, out: list[Alert], force: bool = False) -> None:
        """Lost events no alert carried within a second get an alert of their own."""
        if not self._drops or not DROP_PRIORITY.at_least(self._min_priority):
            return
        if not force and now_ns - self._drops_since_ns < _DROP_GRACE_NS:
            return
        n, self._drops = self._drops, 0
        self.alerts += 1
        out.append(
            Alert(
                now_ns,
                DROP_RULE,
                DROP_PRIORITY,
                f"{n} events lost: the ring buffer was full or records were unreadable (drops={n})",
                {"podlock.drops": n},
                ("podlock_internal",),
                self.hostname,
            )
        )
