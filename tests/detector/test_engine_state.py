"""Engine state over time: rate limiting, lost events, bounded session state."""

from __future__ import annotations

from detector.config import RateLimit
from detector.engine import DROP_RULE
from detector.events import LostEvents
from detector.ratelimit import RateLimiter
from detector.synthetic import (
    CID,
    META,
    SEC,
    T0,
    StaticMeta,
    engine,
    exec_,
    exec_proc,
    exit_,
    proc,
    write,
)

ROOTFS_NOTICE = "Container process wrote to its root filesystem"
LIMIT = RateLimit(enabled=True, rate=1.0, max_burst=3, summary_interval_s=10.0)


def test_rate_limit_per_container_and_rule_reports_what_it_held_back() -> None:
    eng = engine(rate_limit=LIMIT)
    app = proc(200, comm="app")
    other = proc(201, comm="app", cid="cd" * 32)
    emitted = []
    for i in range(10):  # 10 writes in 10 µs: burst of 3, 7 held back
        emitted += eng.process(write(app, f"/etc/f{i}"), T0 + i * 1000)
    assert [a.output_fields["fd.name"] for a in emitted] == ["/etc/f0", "/etc/f1", "/etc/f2"]
    # another container has its own bucket
    assert len(eng.process(write(other, "/etc/o"), T0 + 20_000)) == 1
    # a second later one token is back: the next alert carries the count
    (next_alert,) = eng.process(write(app, "/etc/later"), T0 + SEC + 20_000)
    assert next_alert.output_fields["podlock.suppressed"] == 7
    assert emitted[0].output_fields["podlock.suppressed"] == 0


def test_rate_limit_releases_the_latest_held_alert_after_the_summary_interval() -> None:
    eng = engine(rate_limit=LIMIT)
    app = proc(200, comm="app")
    for i in range(5):
        eng.process(write(app, f"/etc/f{i}"), T0 + i)
    assert eng.flush(T0 + 5 * SEC) == []
    (summary,) = eng.flush(T0 + 11 * SEC)
    assert summary.rule == ROOTFS_NOTICE
    assert summary.output_fields["fd.name"] == "/etc/f4"  # the latest held back
    assert summary.output_fields["podlock.suppressed"] == 1  # the other one held back
    assert eng.flush(T0 + 30 * SEC) == []


def test_rate_limited_aggregate_alerts_keep_their_fields() -> None:
    eng = engine(rate_limit=RateLimit(rate=0.001, max_burst=1, summary_interval_s=5.0))
    for n in range(3):
        tar = exec_proc(400 + n, comm="tar")
        eng.process(write(tar, f"/x/{n}"), T0 + n * 10)
        eng.process(exit_(tar), T0 + n * 10 + 1)
    (summary,) = eng.flush(T0 + 6 * SEC)
    assert summary.output_fields["podlock.agg.items"] == "/x/2"
    assert summary.output_fields["podlock.suppressed"] == 1


def test_lost_events_go_to_the_next_alert_then_reset() -> None:
    eng = engine()
    app = proc(200, comm="app")
    assert eng.process(LostEvents(T0, 17), T0) == []
    (first,) = eng.process(write(app, "/etc/a"), T0 + 10)
    (second,) = eng.process(write(app, "/etc/b"), T0 + 20)
    assert first.output_fields["podlock.drops"] == 17
    assert second.output_fields["podlock.drops"] == 0


def test_lost_events_without_an_alert_get_their_own_within_a_second() -> None:
    eng = engine()
    eng.process(LostEvents(T0, 5), T0)
    eng.process(LostEvents(T0, 6), T0 + 100)
    assert eng.flush(T0 + SEC // 2) == []
    (alert,) = eng.flush(T0 + SEC)
    assert alert.rule == DROP_RULE
    assert alert.output_fields == {"podlock.drops": 11}
    assert "11 events lost" in alert.output
    assert eng.flush(T0 + 3 * SEC) == []


def test_shutdown_emits_open_aggregates_and_pending() -> None:
    eng = engine()
    tar = exec_proc(400, comm="tar")
    eng.process(write(tar, "/x/1"), T0)
    eng.process(LostEvents(T0, 2), T0 + 1)
    alerts = eng.shutdown(T0 + 2)
    assert [a.rule for a in alerts] == ["kubectl cp into container"]
    assert alerts[0].output_fields["podlock.drops"] == 2


def test_session_and_process_state_is_bounded_and_freed_on_exit() -> None:
    eng = engine()
    for pid in range(1000, 11000):
        p = exec_proc(pid, comm="ls")
        eng.process(exec_(p), T0)
        eng.process(exit_(p), T0)
    assert len(eng._sessions) == 0
    assert len(eng._procs) == 0
    for pid in range(20000, 30000):  # never exit: the LRU bound holds
        eng.process(exec_(exec_proc(pid, comm="ls")), T0)
    assert len(eng._sessions) <= 4096
    assert eng.evictions()["engine.sessions"] == 10000 - 4096


def test_rate_limiter_token_refill() -> None:
    limiter: RateLimiter[str, str] = RateLimiter(rate=2.0, max_burst=2, summary_ns=SEC)
    assert limiter.admit("k", 0) == 0
    assert limiter.admit("k", 0) == 0
    assert limiter.admit("k", 0) is None
    limiter.hold("k", 0, "p1")
    assert limiter.admit("k", SEC // 4) is None  # half a token
    limiter.hold("k", SEC // 4, "p2")
    assert limiter.admit("k", SEC // 2) == 2  # one token: reports the two held back
    assert limiter.due(10 * SEC) == []


def test_events_of_unknown_kinds_are_ignored() -> None:
    assert engine().process(object(), T0) == []  # type: ignore[arg-type]


def test_container_id_constant_is_used() -> None:
    assert proc(1).container_id == CID


def test_per_process_fields_follow_new_metadata_for_the_same_process_value() -> None:
    meta = StaticMeta({})
    eng = engine(meta=meta)
    app = proc(200, comm="app")  # one Process value, as the tracker hands out per process
    (before,) = eng.process(write(app, "/etc/a"), T0)
    meta.metas[CID] = META  # the pod became known
    (after,) = eng.process(write(app, "/etc/b"), T0 + 10)
    assert before.output_fields["k8s.pod.name"] is None
    assert after.output_fields["k8s.pod.name"] == META.pod_name
    assert META.pod_name in after.output and "k8s_pod=<NA>" in before.output


def test_per_process_conditions_follow_new_metadata_for_the_same_process_value() -> None:
    meta = StaticMeta({})
    eng = engine(meta=meta)
    probe = exec_proc(300, comm="cat", cmdline=("cat", "/tmp/healthy"))
    eng.process(exec_(probe), T0)
    before = [a.rule for a in eng.process(write(probe, "/etc/a"), T0 + 1)]
    meta.metas[CID] = META  # the pod became known: this session is its liveness probe
    after = [a.rule for a in eng.process(write(probe, "/etc/b"), T0 + 2)]
    assert before == ["Write to container root filesystem in exec session"]
    assert after == []


def test_a_held_back_alert_keeps_the_fields_of_its_own_event() -> None:
    from detector.rules import load_rules

    rules = load_rules(
        [
            (
                "numbered.yaml",
                "- rule: Numbered write\n  desc: d\n  condition: evt.type = open\n"
                "  output: n=%evt.num\n  priority: NOTICE\n",
            )
        ]
    )
    eng = engine(rules, rate_limit=RateLimit(rate=0.001, max_burst=1, summary_interval_s=5.0))
    app, other = proc(200), proc(201, cid="cd" * 32)
    (first,) = eng.process(write(app, "/etc/a"), T0)
    assert eng.process(write(app, "/etc/b"), T0 + 1) == []  # held back: event number 2
    for i in range(5):  # the engine moves on (another container, its own bucket)
        eng.process(write(other, f"/etc/o{i}"), T0 + 2 + i)
    released = eng.flush(T0 + 6 * SEC)  # app's held alert, and the other container's
    (held,) = [a for a in released if a.output_fields["fd.name"] == "/etc/b"]
    assert (first.output, held.output) == ("n=1", "n=2")
