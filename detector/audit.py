"""Who ran an exec session: the API server's audit events for `pods/exec` and
`pods/attach`, matched to the exec sessions the kernel saw. Pure: the caller feeds
decoded audit events and gives the time; the sources (a log file followed, a webhook
backend) live in detector/audit_sources.py.

A session on the node starts after the API server received its request, so the record
that names a session is the most recent unclaimed request for the same namespace, pod,
container and command received at most `window` before the session's first process
started. Only when there is none, a request received up to `skew` after it counts
(clocks that disagree a little), the earliest first. Each record names one session only:
two people running the same command a second apart are told apart. A session with no
such record stays unattributed — `user.name` is absent, never guessed.

Attach requests are kept and counted, but an attach opens no process in the container
(what is typed goes to the container's own process), so no session can be tied to one.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from detector.alerts import Alert, FieldValue
from detector.events import SessionRef
from detector.k8s import ContainerMeta

SUBRESOURCES = ("exec", "attach")


class AuditError(ValueError):
    """An audit event or batch that cannot be read; the message says which field."""


class ExecRecord(NamedTuple):
    """One `kubectl exec`/`cp`/`attach` request, as the API server audited it."""

    audit_id: str
    user: str  # who authenticated: the person (or service account) behind the request
    groups: tuple[str, ...]
    impersonated: str  # the user they acted as (kubectl --as), "" when none
    namespace: str
    pod: str
    container: str  # "" when the request named none (the pod's only or default container)
    command: tuple[str, ...]  # () for attach
    subresource: str  # exec | attach
    time_ns: int  # requestReceivedTimestamp, nanoseconds since the epoch


def _timestamp_ns(value: object, field: str) -> int:
    if not isinstance(value, str):
        raise AuditError(f"'{field}' must be an RFC 3339 time string, not {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise AuditError(f"'{field}' is not an RFC 3339 time: {value!r}") from None
    if moment.tzinfo is None:
        raise AuditError(f"'{field}' has no time zone: {value!r}")
    whole = int(moment.timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1_000


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise AuditError(f"'{where}{key}' must be a string, not {value!r}")
    return value


def parse_event(event: object) -> ExecRecord | None:
    """An audit.k8s.io/v1 Event → its exec/attach record, or None for any other request.
    Raises AuditError naming the field for an event that is not one."""
    if not isinstance(event, dict):
        raise AuditError(f"an audit event must be a JSON object, not {type(event).__name__}")
    ref = event.get("objectRef")
    if not isinstance(ref, dict):
        return None  # not about an object (e.g. /healthz)
    sub = ref.get("subresource")
    if ref.get("resource") != "pods" or sub not in SUBRESOURCES:
        return None
    audit_id = _text(event, "auditID", "")
    if not audit_id:
        raise AuditError("'auditID' is missing")
    user = event.get("user")
    if not isinstance(user, dict) or not _text(user, "username", "user."):
        raise AuditError(f"event {audit_id}: 'user.username' is missing")
    groups = user.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise AuditError(f"event {audit_id}: 'user.groups' must be a list of strings")
    as_user = event.get("impersonatedUser")
    impersonated = (
        _text(as_user, "username", "impersonatedUser.") if isinstance(as_user, dict) else ""
    )
    uri = _text(event, "requestURI", "")
    query = parse_qs(urlsplit(uri).query, keep_blank_values=True)
    containers = query.get("container", [])
    return ExecRecord(
        audit_id=audit_id,
        user=user["username"],
        groups=tuple(groups),
        impersonated=impersonated,
        namespace=_text(ref, "namespace", "objectRef."),
        pod=_text(ref, "name", "objectRef."),
        container=containers[0] if containers else "",
        command=tuple(query.get("command", [])) if sub == "exec" else (),
        subresource=str(sub),
        time_ns=_timestamp_ns(event.get("requestReceivedTimestamp"), "requestReceivedTimestamp"),
    )


def events_of(body: object) -> list[object]:
    """The events of what a source delivered: an EventList (the webhook backend) or one
    Event (a log line)."""
    if isinstance(body, dict) and body.get("kind") == "EventList":
        items = body.get("items")
        if not isinstance(items, list):
            raise AuditError("an EventList's 'items' must be a list")
        return items
    return [body]


class AuditIndex:
    """Recent exec/attach records by pod, and which session each one named.

    Bounded: a record is dropped `ttl_ns` after the request (sessions start within
    `window_ns` of it), and beyond `capacity` records the oldest go first, counted in
    `evicted`. Claims live as long as their record; the per-session answers are an LRU
    of `capacity` sessions."""

    def __init__(
        self,
        *,
        window_ns: int = 30_000_000_000,
        skew_ns: int = 1_000_000_000,
        ttl_ns: int = 600_000_000_000,
        capacity: int = 10_000,
    ) -> None:
        self.window_ns, self.skew_ns, self.ttl_ns = window_ns, skew_ns, ttl_ns
        self.capacity = capacity
        self._records: OrderedDict[str, ExecRecord] = OrderedDict()  # by audit id, oldest first
        self._by_pod: dict[tuple[str, str], list[ExecRecord]] = {}
        self._claimed: dict[str, tuple[str, int]] = {}  # audit id -> (container id, session)
        self._answers: OrderedDict[tuple[str, int], ExecRecord | None] = OrderedDict()
        self.received = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: ExecRecord) -> bool:
        """Keep a record; False when its audit id is already here (another stage of it)."""
        if record.audit_id in self._records:
            return False
        self.received += 1
        self._records[record.audit_id] = record
        self._by_pod.setdefault((record.namespace, record.pod), []).append(record)
        while len(self._records) > self.capacity:
            self._drop(next(iter(self._records)))
            self.evicted += 1
        return True

    def prune(self, now_ns: int) -> None:
        """Forget records older than the ttl (the sources call this as time passes)."""
        while self._records:
            oldest = next(iter(self._records.values()))
            if now_ns - oldest.time_ns < self.ttl_ns:
                break
            self._drop(oldest.audit_id)

    def _drop(self, audit_id: str) -> None:
        record = self._records.pop(audit_id)
        self._claimed.pop(audit_id, None)
        key = (record.namespace, record.pod)
        rest = [r for r in self._by_pod[key] if r.audit_id != audit_id]
        if rest:
            self._by_pod[key] = rest
        else:
            del self._by_pod[key]

    def match(self, session: SessionRef, meta: ContainerMeta) -> ExecRecord | None:
        """The record that names this session, claiming it; the same answer every time
        for a session that was matched before. None: no record (yet)."""
        key = (session.container_id, session.session_id)
        if key in self._answers:
            self._answers.move_to_end(key)
            return self._answers[key]
        if not session.argv or not session.start_ns:
            return None  # a session seen only after the fact: nothing to compare
        start = session.start_ns
        before: ExecRecord | None = None
        after: ExecRecord | None = None
        for r in self._by_pod.get((meta.namespace, meta.pod_name), ()):
            if (
                r.subresource != "exec"
                or r.command != session.argv
                or (r.container and r.container != meta.container_name)
                or r.audit_id in self._claimed
            ):
                continue
            if start - self.window_ns <= r.time_ns <= start:
                if before is None or r.time_ns > before.time_ns:
                    before = r
            elif start < r.time_ns <= start + self.skew_ns and (
                after is None or r.time_ns < after.time_ns
            ):
                after = r
        found = before or after
        if found is not None:
            self._claimed[found.audit_id] = key
            self._answers[key] = found
            if len(self._answers) > self.capacity:
                self._answers.popitem(last=False)
        return found


def attributed(alert: Alert, record: ExecRecord) -> Alert:
    """The alert with who ran its session: `user.name` (the Kubernetes user), their
    groups and the audit id, in the fields and at the end of the output line."""
    fields: dict[str, FieldValue] = dict(alert.output_fields)
    fields["user.name"] = record.user
    fields["k8s.user.groups"] = ",".join(record.groups)
    fields["k8s.audit.id"] = record.audit_id
    extra = f" k8s_user={record.user} k8s_audit_id={record.audit_id}"
    if record.impersonated:
        fields["k8s.user.impersonated"] = record.impersonated
        extra += f" k8s_as={record.impersonated}"
    return alert._replace(output=alert.output + extra, output_fields=fields)


def unattributed(alert: Alert) -> Alert:
    """An exec-session alert no audit record named: it says so, and names nobody."""
    fields: dict[str, FieldValue] = dict(alert.output_fields)
    fields.pop("user.name", None)  # the OS user is not who ran it; say nothing rather than guess
    fields["podlock.audit"] = "unmatched"
    return alert._replace(output=alert.output + " k8s_user=<unmatched>", output_fields=fields)


class _Waiting(NamedTuple):
    alert: Alert
    since_ns: int


class Attributor:
    """Between the engine and the outputs: exec-session alerts wait (at most `hold_ns`)
    for the audit record that names their session. Alerts leave in the order they came,
    so while one waits the ones behind it wait too; without waiting alerts nothing is held.

    `caught_up_ns` is the wall-clock time up to which every audit record is known to be
    in (a followed log file read to its end then); a session that started before that,
    by `settle_ns`, is decided at once."""

    def __init__(
        self,
        index: AuditIndex,
        lookup: Callable[[str], ContainerMeta | None],
        *,
        hold_ns: int = 2_000_000_000,
        settle_ns: int = 200_000_000,
    ) -> None:
        self.index, self._lookup = index, lookup
        self.hold_ns, self.settle_ns = hold_ns, settle_ns
        self._queue: deque[_Waiting] = deque()  # bounded by hold_ns of alerts
        self.attributed = 0  # alerts that left with who ran their session
        self.unattributed = 0  # exec-session alerts no record named

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, alerts: Iterable[Alert], now_ns: int) -> None:
        self._queue.extend(_Waiting(a, now_ns) for a in alerts)

    def ready(self, now_ns: int, caught_up_ns: int = 0, final: bool = False) -> list[Alert]:
        """The alerts that can leave now, in order; `final` decides every one (shutdown)."""
        out: list[Alert] = []
        queue = self._queue
        while queue:
            waiting = queue[0]
            alert = waiting.alert
            session = alert.session
            if session is not None:
                decided = self._decide(session, alert)
                if decided is None:
                    timed_out = now_ns - waiting.since_ns >= self.hold_ns
                    known = session.start_ns and caught_up_ns >= session.start_ns + self.settle_ns
                    if not (final or timed_out or known):
                        break
                    self.unattributed += 1
                    decided = unattributed(alert)
                alert = decided
            queue.popleft()
            out.append(alert)
        return out

    def _decide(self, session: SessionRef, alert: Alert) -> Alert | None:
        meta = self._lookup(session.container_id)
        record = self.index.match(session, meta) if meta is not None else None
        if record is None:
            return None
        self.attributed += 1
        return attributed(alert, record)
