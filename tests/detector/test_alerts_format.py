"""Alerts in Falco's JSON shape and text line."""

from __future__ import annotations

import json

import pytest

from detector.alerts import Alert, Priority, clock_time

ALERT = Alert(
    time_ns=1_790_000_123_000_000_042,
    rule="Shell in container exec session",
    priority=Priority.NOTICE,
    output="Shell in container exec session (shell=sh tty=34816 k8s_pod=<NA>)",
    output_fields={"proc.name": "sh", "proc.tty": 34816, "k8s.pod.name": None, "podlock.drops": 0},
    tags=("maturity_stable", "container"),
    hostname="node-1",
)


def test_json_shape_is_falcos() -> None:
    doc = json.loads(ALERT.to_json())
    assert doc == {
        "time": "2026-09-21T14:15:23.000000042Z",
        "rule": "Shell in container exec session",
        "priority": "Notice",
        "output": "14:15:23.000000042: Notice Shell in container exec session "
        "(shell=sh tty=34816 k8s_pod=<NA>)",
        "output_fields": {"proc.name": "sh", "proc.tty": 34816, "k8s.pod.name": None,
                          "podlock.drops": 0},
        "hostname": "node-1",
        "source": "podlock",
        "tags": ["maturity_stable", "container"],
    }  # fmt: skip
    assert "\n" not in ALERT.to_json()


def test_text_line() -> None:
    assert ALERT.to_text() == (
        "14:15:23.000000042: Notice Shell in container exec session "
        "(shell=sh tty=34816 k8s_pod=<NA>)"
    )


@pytest.mark.parametrize(
    ("ns", "rfc", "clock"),
    [
        (0, "1970-01-01T00:00:00.000000000Z", "00:00:00.000000000"),
        (1_700_000_000_999_999_999, "2023-11-14T22:13:20.999999999Z", "22:13:20.999999999"),
    ],
)
def test_time_formats(ns: int, rfc: str, clock: str) -> None:
    assert json.loads(ALERT._replace(time_ns=ns).to_json())["time"] == rfc
    assert clock_time(ns) == clock


@pytest.mark.parametrize(
    ("text", "expected"),
    [("ERROR", Priority.ERROR), ("error", Priority.ERROR), ("Warning", Priority.WARNING),
     ("NOTICE", Priority.NOTICE), ("info", Priority.INFORMATIONAL), (" debug ", Priority.DEBUG),
     ("emergency", Priority.EMERGENCY), ("loud", None)],
)  # fmt: skip
def test_priority_parse(text: str, expected: Priority | None) -> None:
    assert Priority.parse(text) is expected


def test_priority_order() -> None:
    assert Priority.CRITICAL.at_least(Priority.ERROR)
    assert not Priority.NOTICE.at_least(Priority.WARNING)
    assert [p.value for p in Priority][:4] == ["Emergency", "Alert", "Critical", "Error"]
