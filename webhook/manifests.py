"""Reading manifests: files, directories and stdin into YAML/JSON documents that remember
where each of their nodes sits in the source text.

The linter needs two things PyYAML's `load` throws away: the line of every field (for
findings) and the character offsets of every node (for `--fix`, which edits the text in place).
So we compose the node graph ourselves and construct Python values from it with the same
constructor `safe_load` uses; with libyaml's C parser this costs no more than `safe_load`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

import yaml

# libyaml's C parser composes nodes several times faster than the pure-Python one; the
# marks (line, column, character index) are the same either way.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
# Plain scalars -> resolved tag. Manifests repeat the same keys and values endlessly, and the
# resolver's regular expressions are the composer's main cost; short values only, bounded.
_RESOLVED: dict[str, str] = {}
_RESOLVED_MAX = 100_000


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The safe loader with a memoised resolver and no path resolvers (we register none)."""

    def descend_resolver(self, current_node: object, current_index: object) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _RESOLVED.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(value) <= 64 and len(_RESOLVED) < _RESOLVED_MAX:
                    _RESOLVED[value] = tag
            return tag
        return str(super().resolve(kind, value, implicit))


STDIN = "-"
STDIN_NAME = "<stdin>"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Far above any real manifest (the API server's object limit is 1.5 MiB); the cap only stops
# an accidental `podlock lint /` from reading a disk image into memory.
MAX_BYTES = 32 * 1024 * 1024

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Document:
    """One YAML document: its value as `safe_load` would return it, and its node graph."""

    value: object
    node: yaml.Node
    # Only plain mappings, sequences and scalars, each collection written once: no aliases
    # to collections, merge keys or unusual tags. Only such documents are fixed in place.
    plain: bool = True


@dataclass(frozen=True)
class Source:
    """One parsed input: a file or stdin."""

    name: str  # as shown in reports: the path as found, or <stdin>
    path: str | None  # filesystem path, None for stdin
    text: str  # decoded text without a byte-order mark; node marks index into it
    bom: bool  # the file started with a UTF-8 byte-order mark (kept on --fix)
    documents: tuple[Document, ...]


@dataclass(frozen=True)
class ParseError:
    """A file we could not read as YAML; `line` is 1-based, None when no line applies."""

    file: str
    line: int | None
    message: str


def discover(paths: Sequence[str]) -> tuple[list[str], list[ParseError]]:
    """Expand the command-line PATHs into input names, in a stable order.

    Directories are walked recursively for .yaml/.yml/.json files (sorted, hidden directories
    such as .git skipped); a file named explicitly is read whatever its suffix; `-` is stdin.
    """
    found: list[str] = []
    errors: list[ParseError] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        # A file named twice (or reached through two spellings) is read once.
        key = name if name == STDIN else os.path.realpath(name)
        if key not in seen:
            seen.add(key)
            found.append(name)

    for raw in paths:
        if raw == STDIN:
            add(STDIN)
        elif os.path.isdir(raw):
            for name in _walk(raw):
                add(name)
        elif os.path.exists(raw):
            add(raw)
        else:
            errors.append(ParseError(raw, None, "no such file or directory"))
    return found, errors


def _walk(root: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        # Sorting in place also fixes the order os.walk descends in.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.endswith(MANIFEST_SUFFIXES) and not filename.startswith("."):
                yield os.path.join(dirpath, filename)


def read(name: str, stdin: bytes | None = None) -> Source | ParseError:
    """Read and parse one input named by `discover` (stdin's bytes are passed in)."""
    if name == STDIN:
        return parse(STDIN_NAME, None, stdin or b"")
    try:
        size = os.path.getsize(name)
        if size > MAX_BYTES:
            return ParseError(name, None, f"file is larger than {MAX_BYTES >> 20} MiB")
        data = FsPath(name).read_bytes()
    except OSError as e:
        return ParseError(name, None, f"cannot read file: {e.strerror or e}")
    return parse(name, name, data)


def parse(name: str, path: str | None, data: bytes) -> Source | ParseError:
    """Decode and parse `data`: every document, or one error for the whole input."""
    bom = data.startswith(b"\xef\xbb\xbf")
    try:
        text = data[3:].decode("utf-8") if bom else data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return ParseError(name, line, f"not UTF-8 text (byte {e.start + 1} cannot be decoded)")
    try:
        documents = parse_text(text)
    except yaml.MarkedYAMLError as e:
        message = _yaml_message(e)
        mark = e.problem_mark
        if mark is not None and text[mark.index : mark.index + 1] == "\t":
            message += "; YAML indents with spaces, not tabs"
        return ParseError(name, _mark_line(e), message)
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        return ParseError(name, line, f"invalid YAML: {_reader_problem(e)}")
    except yaml.YAMLError as e:
        return ParseError(name, None, f"invalid YAML: {_one_line(str(e))}")
    except RecursionError:
        return ParseError(name, None, "invalid YAML: nested too deeply")
    return Source(name, path, text, bom, documents)


def parse_text(text: str) -> tuple[Document, ...]:
    """All documents of a YAML (or JSON) stream; raises yaml.YAMLError on bad input."""
    loader = _Loader(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            assert node is not None  # check_node() said there is one
            builder = _Builder()
            try:
                value, plain = builder.build(node), not builder.shared
            except _Unusual:
                # Merge keys, sets, custom tags, unhashable keys: PyYAML's own constructor
                # gives the exact result (or the exact error).
                value, plain = loader.construct_document(node), False
            documents.append(Document(value, node, plain))
        return tuple(documents)
    finally:
        loader.dispose()


class _Unusual(Exception):
    """The node graph needs PyYAML's full constructor."""


# Stateless constructors of the safe schema's scalar tags (str handled inline).
_SCALARS = {
    tag: constructor
    for tag, constructor in yaml.constructor.SafeConstructor.yaml_constructors.items()
    if tag
    in (
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:timestamp",
    )
}
_SCALAR_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class _Builder:
    """Values from nodes, equal to what SafeConstructor builds, at a fraction of its cost.

    Plain maps, sequences and scalars of the safe schema only; anything else raises _Unusual.
    Collections are memoised by node so aliases share one value, as with PyYAML.
    """

    def __init__(self) -> None:
        self.memo: dict[int, object] = {}
        self.shared = False  # some collection is reached twice (an alias)

    def build(self, node: yaml.Node) -> Any:
        kind = type(node)
        tag = node.tag
        if kind is yaml.ScalarNode:
            if tag == _STR:
                return node.value
            constructor = _SCALARS.get(tag)
            if constructor is None:
                raise _Unusual
            return constructor(_SCALAR_CONSTRUCTOR, node)
        done = self.memo.get(id(node))
        if done is not None:
            self.shared = True
            return done
        if kind is yaml.MappingNode and tag == _MAP:
            mapping: dict[Any, Any] = {}
            self.memo[id(node)] = mapping
            for key_node, value_node in node.value:
                if type(key_node) is not yaml.ScalarNode or key_node.tag not in _KEY_TAGS:
                    raise _Unusual  # merge keys, complex keys
                mapping[self.build(key_node)] = self.build(value_node)
            return mapping
        if kind is yaml.SequenceNode and tag == _SEQ:
            sequence: list[Any] = []
            self.memo[id(node)] = sequence
            sequence.extend(self.build(item) for item in node.value)
            return sequence
        raise _Unusual


_KEY_TAGS = frozenset((_STR, *_SCALARS))


def _mark_line(e: yaml.MarkedYAMLError) -> int | None:
    mark = e.problem_mark or e.context_mark
    return mark.line + 1 if mark is not None else None


def _yaml_message(e: yaml.MarkedYAMLError) -> str:
    problem = _one_line(e.problem or "malformed document")
    if e.context and e.context_mark is not None:
        context = f" ({_one_line(e.context)} at line {e.context_mark.line + 1})"
    elif e.context:
        context = f" ({_one_line(e.context)})"
    else:
        context = ""
    return f"invalid YAML: {problem}{context}"


def _reader_problem(e: yaml.reader.ReaderError) -> str:
    char = e.character
    code = char if isinstance(char, int) else ord(char) if char else 0
    return f"{e.reason} #x{code:04x}"


def _one_line(message: str) -> str:
    return " ".join(message.split())


# --- positions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Located:
    """The deepest node found along a path: `depth` of the path's segments were matched."""

    depth: int
    node: yaml.Node  # the value node at that depth
    key: yaml.Node | None  # its key node when the last matched segment was a mapping key


def locate(root: yaml.Node, path: Path) -> Located:
    """Follow `path` through the node graph as far as it exists.

    Duplicate mapping keys resolve to the last one, like PyYAML's constructor does. Merge
    keys (`<<`) are not followed: their fields are found at the nearest ancestor instead.
    """
    node: yaml.Node = root
    key: yaml.Node | None = None
    for depth, segment in enumerate(path):
        child = child_of(node, segment)
        if child is None:
            return Located(depth, node, key)
        key, node = child
    return Located(len(path), node, key)


def child_of(node: yaml.Node, segment: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
    """The (key node, value node) under `segment`, or None when there is none."""
    if isinstance(node, yaml.MappingNode) and isinstance(segment, str):
        for key, value in reversed(node.value):
            if isinstance(key, yaml.ScalarNode) and key.value == segment and _is_str_key(key):
                return key, value
    elif (
        isinstance(node, yaml.SequenceNode)
        and isinstance(segment, int)
        and 0 <= segment < len(node.value)
    ):
        return None, node.value[segment]
    return None


def _is_str_key(key: yaml.ScalarNode) -> bool:
    # `true: x` and `1: x` construct to bool/int keys, which never equal a path segment.
    return key.tag == "tag:yaml.org,2002:str"


def line_of(root: yaml.Node, path: Path) -> int:
    """1-based line of the field at `path`, or of its nearest ancestor that exists.

    A mapping field's line is its key's line (`readOnlyRootFilesystem: false`), a list item's
    is the item's first line (`- name: app`).
    """
    found = locate(root, path)
    mark = (found.key or found.node).start_mark
    return int(mark.line) + 1
