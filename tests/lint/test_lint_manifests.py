"""Reading manifests: discovery, parse errors as one sentence with a line, values equal to
PyYAML's, and the line of any field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lint_support import parse

from webhook import manifests
from webhook.manifests import ParseError

BROKEN: list[tuple[str, bytes, int | None, str]] = [
    ("tab indentation", b"a:\n\tb: 1\n", 2, "YAML indents with spaces, not tabs"),
    ("unclosed flow list", b"a: [b, c\n", 2, "did not find expected ',' or ']'"),
    ("bad indentation", b"key: value\n  bad: indent\n", 2, "mapping values are not allowed"),
    ("unhashable key", b"? [a]\n: 1\n", 1, "found unhashable key"),
    ("unknown tag", b"a: !foo x\n", 1, "could not determine a constructor for the tag '!foo'"),
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


SAME_AS_PYYAML = [
    ("anchors and aliases", "a: &x {b: [1, 2]}\nc: *x\n"),
    ("merge keys", "base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\n"),
    (
        "scalars of every safe type",
        "i: 0x1F\no: 0o17\nf: 1.5e3\ninf: .inf\nb: yes\nn: ~\n"
        "t: 2001-12-14t21:59:43.10-05:00\nd: 2002-12-14\ns: '012'\ne:\n",
    ),
    ("non-string keys", "1: one\ntrue: yes\nnull: nothing\n1.5: x\n"),
    ("duplicate keys: the last wins", "a: 1\nb: 2\na: 3\n"),
    ("binary and set tags", "b: !!binary aGVsbG8=\ns: !!set {x, y}\n"),
    ("several documents", "a: 1\n---\n- x\n---\n...\n"),
    ("JSON with trailing comma and tabs", '{\n\t"a": [1, 2,],\n\t"b": {"c": null}\n}\n'),
]


@pytest.mark.parametrize(("case", "text"), SAME_AS_PYYAML, ids=[c[0] for c in SAME_AS_PYYAML])
def test_values_equal_pyyaml_safe_load(case: str, text: str) -> None:
    expected = list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    assert [d.value for d in parse(text).documents] == expected


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
