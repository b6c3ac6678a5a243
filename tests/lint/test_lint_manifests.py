"""Reading manifests: discovery, parse errors as one sentence with a line, values as kubectl
sends them (checked against the real kubectl in test_lint_kubectl_reading.py), and the line
of any field."""

from __future__ import annotations

from pathlib import Path

import pytest
from lint_support import parse

from webhook import manifests
from webhook.manifests import ParseError

BROKEN: list[tuple[str, bytes, int | None, str]] = [
    ("tab indentation", b"a:\n\tb: 1\n", 2, "YAML indents with spaces, not tabs"),
    ("unclosed flow list", b"a: [b, c\n", 2, "did not find expected ',' or ']'"),
    ("bad indentation", b"key: value\n  bad: indent\n", 2, "mapping values are not allowed"),
    ("collection key", b"? [a]\n: 1\n", 1, "a list or mapping as a mapping key"),
    ("infinity", b"a:\n  b: .inf\n", 2, "a.b: .inf is not a number JSON can carry"),
    ("null key", b"a:\n  ~: 1\n", 2, "a.~: a null mapping key, which kubectl refuses"),
    ("undefined alias", b"a: *nope\n", 1, "found undefined alias"),
    ("control character", b"a: \x07\n", 1, "control characters are not allowed #x0007"),
    ("binary junk", b"\x7fELF\x02\x01\x01\x00\xff\xfe", 1, "not UTF-8 text (byte 9"),
    ("Latin-1 text", b"a: 1\nb: caf\xe9\n", 2, "not UTF-8 text"),
    ("nested too deeply", b"[" * 100_000, 1, "exceeded maximum nesting depth"),
    ("second document broken", b"a: 1\n---\nb: [\n", 4, "invalid YAML"),
]


@pytest.mark.parametrize(("case", "data", "line", "problem"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_input_is_one_error_with_a_line(
    case: str, data: bytes, line: int | None, problem: str
) -> None:
    result = manifests.parse("bad.yaml", "bad.yaml", data)
    assert isinstance(result, ParseError)
    assert result.file == "bad.yaml"
    assert result.line == line
    assert problem in result.message
    assert "\n" not in result.message


AS_KUBECTL_SENDS: list[tuple[str, str, list[object]]] = [
    (
        "anchors and aliases",
        "a: &x {b: [1, 2]}\nc: *x\n",
        [{"a": {"b": [1, 2]}, "c": {"b": [1, 2]}}],
    ),
    (
        "merge keys",
        "base: &b {x: 1}\nd:\n  <<: *b\n  w: 2\n",
        [{"base": {"x": 1}, "d": {"x": 1, "w": 2}}],
    ),
    (
        "scalars",
        "i: 0x1F\no: 0o17\nf: 1.5e3\nb: yes\nu: ~\nt: 2001-12-14t21:59:43.10-05:00\n"
        "s: '012'\ne:\nz: 0e0\nh: 1.5\nx: 1:20\n",
        [
            {
                "i": 31,
                "o": 15,
                "f": 1500,
                "b": True,
                "u": None,
                "t": "2001-12-14t21:59:43.10-05:00",
                "s": "012",
                "e": None,
                "z": 0,
                "h": 1.5,
                "x": "1:20",
            }
        ],
    ),
    ("non-string keys", "1: one\ntrue: yes\n1.5: x\n", [{"1": "one", "true": True, "1.5": "x"}]),
    ("duplicate keys: the last wins", "a: 1\nb: 2\na: 3\n", [{"a": 3, "b": 2}]),
    (
        "tags kubectl ignores",
        "b: !!binary aGVsbG8=\ns: !!set {x, v}\nf: !foo 1\n",
        [{"b": "hello", "s": {"x": None, "v": None}, "f": "1"}],
    ),
    ("several documents", "a: 1\n---\n- x\n---\n...\n", [{"a": 1}, ["x"], None]),
    (
        "JSON with trailing comma and tabs",
        '{\n\t"a": [1, 2,],\n\t"b": {"c": null}\n}\n',
        [{"a": [1, 2], "b": {"c": None}}],
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "values"), AS_KUBECTL_SENDS, ids=[c[0] for c in AS_KUBECTL_SENDS]
)
def test_values_are_what_kubectl_sends(case: str, text: str, values: list[object]) -> None:
    assert [d.value for d in parse(text).documents] == values


def test_aliases_share_one_value_and_mark_the_document_as_not_plain() -> None:
    (document,) = parse("a: &x {b: 1}\nc: *x\n").documents
    assert isinstance(document.value, dict)
    assert document.value["a"] is document.value["c"]
    assert not document.plain
    assert parse("a: {b: 1}\nc: {b: 1}\n").documents[0].plain


def test_byte_order_mark_is_dropped_and_remembered() -> None:
    source = manifests.parse("f.yaml", None, b"\xef\xbb\xbfa: 1\nb: 2\n")
    assert isinstance(source, manifests.Source)
    assert source.bom and source.text == "a: 1\nb: 2\n"
    assert manifests.line_of(source.documents[0].node, ("b",)) == 2


POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  securityContext: {runAsUser: 0}
  containers:
  - name: app
    image: busybox
    securityContext:
      readOnlyRootFilesystem: false
  - name: side

    image: busybox
"""

LINES = [
    (("spec", "containers", 0, "securityContext", "readOnlyRootFilesystem"), 11),
    (("spec", "containers", 0), 8),
    (("spec", "containers", 1, "securityContext", "readOnlyRootFilesystem"), 12),
    (("spec", "securityContext", "runAsUser"), 6),
    (("spec", "containers", 7, "image"), 7),  # no such item: the list's key line
    (("metadata", "name"), 4),
    ((), 1),
]


@pytest.mark.parametrize(("path", "line"), LINES, ids=[str(p) for p, _ in LINES])
def test_line_of_a_field_or_its_nearest_ancestor(path: tuple[str | int, ...], line: int) -> None:
    assert manifests.line_of(parse(POD).documents[0].node, path) == line


def test_line_numbers_count_from_the_file_start_across_documents() -> None:
    documents = parse("a: 1\n---\n# c\nb:\n  c: 2\n").documents
    assert manifests.line_of(documents[1].node, ("b", "c")) == 5


def test_discover_walks_directories_in_order(tmp_path: Path) -> None:
    for name in ("b/z.yaml", "b/a.yml", "a.json", "c.txt", ".hidden/x.yaml", "b/.x.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a: 1\n")
    explicit = tmp_path / "c.txt"
    names, errors = manifests.discover([str(tmp_path), str(explicit), "-", str(tmp_path / "nope")])
    assert [Path(n).relative_to(tmp_path).as_posix() if n != "-" else n for n in names] == [
        "a.json",
        "b/a.yml",
        "b/z.yaml",
        "c.txt",  # named explicitly: read whatever its suffix
        "-",
    ]
    assert errors == [ParseError(str(tmp_path / "nope"), None, "no such file or directory")]


def test_oversized_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifests, "MAX_BYTES", 1024)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 2000 + "\n")
    assert manifests.read(str(big)) == ParseError(str(big), None, "file is larger than 0 MiB")
