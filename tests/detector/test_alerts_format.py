"""Alerts in Falco's JSON shape and text line."""

from __future__ import annotations

import base64
import json
import tracemalloc
import unicodedata

import orjson
import pytest
from escapes import unescape
from hypothesis import given
from hypothesis import strategies as st

from detector.alerts import Alert, Priority, clock_time, join_items, split_items

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


# --- names chosen to break the outputs: newlines, escapes, separators, bytes not UTF-8 ------

NASTY = [
    b"/etc/a\nb",
    b"/etc/x\n14:15:23.000000042: Critical Forged alert (user=root)",  # a forged line
    b"/etc/\r\x1b[2J\x1b]0;title\x07clear",  # CR, ESC sequences, BEL
    b"/etc/\x00\x01\x7f del and nul",
    "/etc/c1 \u0085 \u009b31m".encode(),  # C1 controls (NEL, CSI) as UTF-8 characters
    "/etc/\u202egnp.exe \u2028 sep".encode(),  # bidi override, line separator
    b"/etc/ev\xffil \xc3\x28 \xed\xa0\x80",  # not UTF-8 at all
    b"/etc/back\\slash\\n, comma",  # a literal backslash-n and the list separator
]


def _alert_with(name: bytes) -> Alert:
    path = name.decode("utf-8", "surrogateescape")  # as decode() hands paths over
    return ALERT._replace(output=f"Write (file={path})", output_fields={"fd.name": path})


@pytest.mark.parametrize("name", NASTY)
def test_text_line_is_one_line_with_nothing_raw_and_decodes_back(name: bytes) -> None:
    line = _alert_with(name).to_text()
    assert line.isprintable(), line  # no control, separator or surrogate is left raw
    assert len(line.splitlines()) == 1
    assert not any(unicodedata.bidirectional(c) in _BIDI_CONTROLS for c in line)
    line.encode("utf-8")  # strict: nothing left that is not UTF-8
    assert unescape(line).endswith(b"(file=" + name + b")")


_BIDI_CONTROLS = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}


@pytest.mark.parametrize("name", NASTY)
def test_json_is_strict_json_and_carries_the_exact_bytes(name: bytes) -> None:
    encoded = _alert_with(name).to_json_bytes()
    doc = orjson.loads(encoded)  # strict: rejects lone surrogates
    fields = doc["output_fields"]
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        assert base64.b64decode(fields["fd.name.b64"]) == name
        assert "\\xff" in fields["fd.name"] or "\\xed" in fields["fd.name"]
    else:  # a UTF-8 name is carried as it is, Falco's shape untouched
        assert fields == {"fd.name": name.decode()}
        assert doc["output"].endswith(f"(file={name.decode()})")
    assert b"\n" not in encoded


@given(st.binary(max_size=40))
def test_any_name_survives_text_and_json(name: bytes) -> None:
    alert = _alert_with(name)
    assert unescape(alert.to_text()).endswith(b"(file=" + name + b")")
    fields = orjson.loads(alert.to_json_bytes())["output_fields"]
    raw = base64.b64decode(fields["fd.name.b64"]) if "fd.name.b64" in fields else None
    assert (raw if raw is not None else fields["fd.name"].encode()) == name


@given(st.lists(st.text(alphabet=",\\ab\n")))
def test_lists_in_a_field_split_back_exactly(items: list[str]) -> None:
    joined = join_items(items)
    assert split_items(joined) == (items if items != [""] else [])


def test_plain_lists_read_as_before() -> None:
    assert join_items(["/a/1", "/a/2"]) == "/a/1,/a/2"
    assert join_items(["/a/x,y", "/a/b\\c"]) == "/a/x\\,y,/a/b\\\\c"


def test_an_encoded_alert_holds_only_its_own_bytes() -> None:
    """Queues keep alerts as their JSON: each must cost its length, not the capacity of
    the encoder's buffer (orjson's grows to 8 KiB for a 1.3 KiB alert)."""
    alert = ALERT._replace(output_fields={f"field.{i}": "x" * 50 for i in range(20)})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [alert.to_json_bytes() for _ in range(1000)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1.5 * sum(map(len, kept))
