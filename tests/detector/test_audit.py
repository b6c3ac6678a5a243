"""Who ran an exec session: audit events read, matched to sessions, and attached to alerts
(detector/audit.py), and the two sources that deliver them, run for real: a log file
followed across rotation and an HTTP server the API server would post to."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest

from detector.alerts import Alert, Priority
from detector.audit import (
    Attributor,
    AuditError,
    AuditIndex,
    ExecRecord,
    events_of,
    parse_event,
)
from detector.audit_sources import Inbox, LogFollower, WebhookReceiver
from detector.config import ConfigError, load_detector_settings
from detector.events import SessionRef
from detector.synthetic import CID, META, SEC, T0, StaticMeta, engine, exec_, exec_proc, proc, write

MS = 1_000_000


def _stamp(time_ns: int) -> str:
    secs, nanos = divmod(time_ns, SEC)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos // 1000:06d}Z"


def exec_event(
    user: str = "alice",
    command: tuple[str, ...] = ("sh",),
    *,
    at: int = T0,
    audit_id: str = "",
    container: str = "web",
    groups: tuple[str, ...] = ("dev", "system:authenticated"),
    subresource: str = "exec",
    stage: str = "ResponseStarted",
    pod: str = META.pod_name,
    namespace: str = META.namespace,
) -> dict[str, Any]:
    """An audit.k8s.io/v1 Event as the API server writes it for `kubectl exec`."""
    query = "&".join(f"command={c}" for c in command)
    query += f"&container={container}&stdin=true&stdout=true&tty=true"
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id or f"{user}-{at}",
        "stage": stage,
        "requestURI": f"/api/v1/namespaces/{namespace}/pods/{pod}/{subresource}?{query}",
        "verb": "create",
        "user": {"username": user, "groups": list(groups)},
        "sourceIPs": ["127.0.0.1"],
        "userAgent": "kubectl/v1.37.1 (linux/amd64) kubernetes/abcdef0",
        "objectRef": {
            "resource": "pods",
            "namespace": namespace,
            "name": pod,
            "apiVersion": "v1",
            "subresource": subresource,
        },
        "requestReceivedTimestamp": _stamp(at),
        "stageTimestamp": _stamp(at + 3 * MS),
    }


def record(user: str, command: tuple[str, ...] = ("sh",), at: int = T0, **kw: Any) -> ExecRecord:
    parsed = parse_event(exec_event(user, command, at=at, **kw))
    assert parsed is not None
    return parsed


def session(pid: int, argv: tuple[str, ...] = ("sh",), start: int = T0) -> SessionRef:
    return SessionRef(CID, pid, argv, start)


# --- reading events ---------------------------------------------------------------------------


def test_an_exec_event_gives_who_which_pod_container_command_and_when() -> None:
    event = exec_event("alice", ("tar", "-xmf", "-", "-C", "/tmp/x"), at=T0 + 123_456_000)
    event["impersonatedUser"] = {"username": "ops-bot"}
    r = parse_event(event)
    assert r == ExecRecord(
        audit_id=f"alice-{T0 + 123_456_000}",
        user="alice",
        groups=("dev", "system:authenticated"),
        impersonated="ops-bot",
        namespace="shop",
        pod="web-7d9f",
        container="web",
        command=("tar", "-xmf", "-", "-C", "/tmp/x"),
        subresource="exec",
        time_ns=T0 + 123_456_000,
    )


def test_other_requests_are_not_exec_records() -> None:
    pods_list = exec_event()
    pods_list["objectRef"] = {"resource": "pods", "namespace": "shop"}
    logs = exec_event()
    logs["objectRef"]["subresource"] = "log"
    assert parse_event(pods_list) is None
    assert parse_event(logs) is None
    assert parse_event({"kind": "Event", "requestURI": "/healthz"}) is None
    attach = parse_event(exec_event(subresource="attach"))
    assert attach is not None and attach.command == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("auditID"), "'auditID' is missing"),
        (lambda e: e["user"].pop("username"), "'user.username' is missing"),
        (lambda e: e["user"].update(groups="dev"), "'user.groups' must be a list"),
        (lambda e: e.update(requestReceivedTimestamp=5), "'requestReceivedTimestamp' must be"),
        (lambda e: e.update(requestReceivedTimestamp="yesterday"), "is not an RFC 3339 time"),
        (lambda e: e["objectRef"].update(name=7), "'objectRef.name' must be a string"),
    ],
)
def test_a_broken_exec_event_is_refused_naming_the_field(change: Any, message: str) -> None:
    event = exec_event()
    change(event)
    with pytest.raises(AuditError, match=message):
        parse_event(event)


def test_an_event_list_gives_its_items_and_a_bad_one_is_named() -> None:
    assert events_of({"kind": "EventList", "items": [1, 2]}) == [1, 2]
    assert events_of({"kind": "Event"}) == [{"kind": "Event"}]
    with pytest.raises(AuditError, match="'items' must be a list"):
        events_of({"kind": "EventList", "items": None})


# --- matching ---------------------------------------------------------------------------------


def test_two_people_running_the_same_command_a_second_apart_are_told_apart() -> None:
    for order in ((1, 2), (2, 1)):  # whichever session is asked about first
        index = AuditIndex()
        index.add(record("alice", at=T0))
        index.add(record("bob", at=T0 + SEC))
        sessions = {1: session(101, start=T0 + 80 * MS), 2: session(102, start=T0 + SEC + 80 * MS)}
        users = {n: index.match(sessions[n], META) for n in order}
        assert users[1] is not None and users[1].user == "alice"
        assert users[2] is not None and users[2].user == "bob"


def test_a_session_is_matched_on_pod_container_and_command_only() -> None:
    index = AuditIndex()
    index.add(record("alice", ("sh",), container="sidecar"))
    index.add(record("bob", ("ls", "/")))
    index.add(record("carol", ("sh",), pod="other-pod"))
    assert index.match(session(101, ("sh",), T0 + 50 * MS), META) is None
    bob = index.match(session(102, ("ls", "/"), T0 + 50 * MS), META)
    assert bob is not None and bob.user == "bob"


def test_a_request_naming_no_container_matches_any_container_of_the_pod() -> None:
    index = AuditIndex()
    event = exec_event("alice")
    event["requestURI"] = event["requestURI"].replace("&container=web", "")
    parsed = parse_event(event)
    assert parsed is not None and parsed.container == ""
    index.add(parsed)
    found = index.match(session(101, start=T0 + MS), META)
    assert found is not None and found.user == "alice"


def test_each_record_names_one_session_and_a_session_keeps_its_answer() -> None:
    index = AuditIndex()
    index.add(record("alice"))
    first = index.match(session(101, start=T0 + MS), META)
    assert first is not None
    assert index.match(session(102, start=T0 + 2 * MS), META) is None  # alice's is taken
    assert index.match(session(101, start=T0 + MS), META) == first  # asked again: the same


def test_the_window_and_the_clock_skew_bound_a_match() -> None:
    index = AuditIndex(window_ns=30 * SEC, skew_ns=SEC)
    index.add(record("old", at=T0 - 31 * SEC))
    assert index.match(session(101, start=T0), META) is None  # too long before
    index.add(record("ahead", at=T0 + 500 * MS))  # the node's clock is behind a little
    found = index.match(session(102, start=T0), META)
    assert found is not None and found.user == "ahead"
    index.add(record("later", at=T0 + 2 * SEC))
    assert index.match(session(103, start=T0), META) is None


def test_a_session_whose_start_was_not_seen_is_never_guessed() -> None:
    index = AuditIndex()
    index.add(record("alice"))
    assert index.match(SessionRef(CID, 101, (), 0), META) is None
    assert index.match(SessionRef(CID, 101, ("sh",), 0), META) is None


def test_the_index_is_bounded_by_age_and_count_and_ignores_repeated_stages() -> None:
    index = AuditIndex(ttl_ns=60 * SEC, capacity=3)
    assert index.add(record("alice", at=T0, stage="RequestReceived"))
    assert not index.add(record("alice", at=T0, stage="ResponseComplete"))  # same audit id
    for n in range(1, 4):
        index.add(record(f"u{n}", at=T0 + n * SEC))
    assert len(index) == 3 and index.evicted == 1 and index.received == 4
    index.prune(T0 + 62 * SEC)
    assert len(index) == 1  # only u3, from T0 + 3 s, is younger than a minute
    index.prune(T0 + 70 * SEC)
    assert len(index) == 0


# --- attributing alerts -----------------------------------------------------------------------


def _alert(n: int, ref: SessionRef | None, user: str | None = None) -> Alert:
    fields: dict[str, str | int | None] = {"n": n}
    if user is not None:
        fields["user.name"] = user
    return Alert(T0, f"rule {n}", Priority.NOTICE, f"alert {n}", fields, (), "node-1", ref)


def test_alerts_leave_in_order_and_a_matched_one_names_who_ran_the_session() -> None:
    index = AuditIndex()
    attributor = Attributor(index, StaticMeta().lookup, hold_ns=2 * SEC)
    ref = session(101, start=T0 + 10 * MS)
    attributor.push([_alert(1, None), _alert(2, ref, user="root"), _alert(3, None)], T0)
    assert [a.output_fields["n"] for a in attributor.ready(T0)] == [1]  # 2 waits, 3 behind it
    index.add(record("alice", groups=("dev", "ops")))
    out = attributor.ready(T0 + 100 * MS)
    assert [a.output_fields["n"] for a in out] == [2, 3]
    fields = out[0].output_fields
    assert fields["user.name"] == "alice"  # the Kubernetes user, not the OS one
    assert fields["k8s.user.groups"] == "dev,ops"
    assert fields["k8s.audit.id"] == f"alice-{T0}"
    assert out[0].output == f"alert 2 k8s_user=alice k8s_audit_id=alice-{T0}"
    assert "user.name" not in out[1].output_fields
    assert attributor.attributed == 1 and len(attributor) == 0


def test_an_unmatched_session_says_so_after_the_hold_and_names_nobody() -> None:
    attributor = Attributor(AuditIndex(), StaticMeta().lookup, hold_ns=2 * SEC)
    attributor.push([_alert(1, session(101), user="root")], T0)
    assert attributor.ready(T0 + SEC) == []
    (out,) = attributor.ready(T0 + 2 * SEC)
    assert "user.name" not in out.output_fields
    assert out.output_fields["podlock.audit"] == "unmatched"
    assert out.output.endswith("k8s_user=<unmatched>")
    assert attributor.unattributed == 1


def test_a_log_read_past_the_session_start_decides_at_once_and_shutdown_decides_all() -> None:
    attributor = Attributor(AuditIndex(), StaticMeta().lookup, hold_ns=60 * SEC)
    attributor.push([_alert(1, session(101, start=T0))], T0)
    assert attributor.ready(T0, caught_up_ns=T0 + 100 * MS) == []  # not settled yet
    assert len(attributor.ready(T0, caught_up_ns=T0 + 300 * MS)) == 1
    attributor.push([_alert(2, session(102, start=T0))], T0)
    assert len(attributor.ready(T0, final=True)) == 1


def test_the_engine_puts_the_session_on_exec_alerts_only() -> None:
    eng = engine()
    shell = exec_proc(300, comm="sh", cmdline=("sh", "-c", "echo x > /etc/x"))
    eng.process(exec_(shell, t=T0 + 5), T0 + 5)
    (exec_alert,) = [a for a in eng.process(write(shell, "/etc/x", t=T0 + 9), T0 + 9)]
    assert exec_alert.session == SessionRef(CID, 300, ("sh", "-c", "echo x > /etc/x"), T0 + 5)
    (own,) = eng.process(write(proc(200), "/etc/y"), T0 + 10)
    assert own.session is None


# --- the sources, for real ----------------------------------------------------------------------


def _wait(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_the_log_follower_reads_appends_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(json.dumps(exec_event("alice", audit_id="a1")) + "\n")
    inbox = Inbox()
    follower = LogFollower(str(log), inbox)
    follower.start()
    try:
        index = AuditIndex()
        _wait(lambda: (inbox.drain_into(index), len(index))[1] == 1, "the first record")
        before = time.time_ns()
        _wait(lambda: inbox.caught_up_ns >= before, "the end of the file")
        with log.open("a") as fh:  # a line written in two pieces
            line = json.dumps(exec_event("bob", audit_id="b1"))
            fh.write(line[:40])
            fh.flush()
            time.sleep(0.2)
            fh.write(line[40:] + "\n")
        _wait(lambda: (inbox.drain_into(index), len(index))[1] == 2, "the appended record")
        log.rename(tmp_path / "audit.log.1")  # rotation: a new file under the old name
        log.write_text("not json\n" + json.dumps(exec_event("carol", audit_id="c1")) + "\n")
        _wait(lambda: (inbox.drain_into(index), len(index))[1] == 3, "the rotated file")
        assert inbox.bad == 1
        log.write_text(json.dumps(exec_event("dave", audit_id="d1")) + "\n")  # truncated
        _wait(lambda: (inbox.drain_into(index), len(index))[1] == 4, "the truncated file")
    finally:
        follower.close()
    found = [index.match(session(i, start=T0 + MS), META) for i in range(5)]
    assert {r.user for r in found if r is not None} == {"alice", "bob", "carol", "dave"}
    assert found[4] is None  # four requests name four sessions, not a fifth


def _post(port: int, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/", body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_the_webhook_backend_takes_event_lists_and_answers_bad_bodies_in_a_sentence() -> None:
    inbox = Inbox()
    receiver = WebhookReceiver("127.0.0.1:0", inbox)
    receiver.start()
    try:
        batch = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1"}
        batch["items"] = [exec_event("alice", audit_id="a"), exec_event("bob", audit_id="b")]
        assert _post(receiver.port, json.dumps(batch).encode())[0] == 200
        status, text = _post(receiver.port, b"{not json")
        assert status == 400 and "the body is not JSON" in text
        bad_item = json.dumps({"kind": "EventList", "items": [{"objectRef": {}}, 5]}).encode()
        assert _post(receiver.port, bad_item)[0] == 200  # counted, the rest still read
        assert inbox.bad == 2
    finally:
        receiver.close()
    index = AuditIndex()
    inbox.drain_into(index)
    assert len(index) == 2


def test_the_config_names_a_bad_audit_key(tmp_path: Path) -> None:
    config = tmp_path / "podlock.yaml"
    config.write_text("k8s_audit: {webhook_bind: localhost}\n")
    with pytest.raises(ConfigError, match=r"'k8s_audit.webhook_bind': must be HOST:PORT"):
        load_detector_settings(str(config), [])
    config.write_text("k8s_audit: {log_file: /var/log/audit.log, hold: 0.5}\n")
    audit = load_detector_settings(str(config), []).k8s_audit
    assert audit.enabled and audit.log_file == "/var/log/audit.log" and audit.hold_s == 0.5
