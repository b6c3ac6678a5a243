"""Reading manifests: files, directories and stdin into YAML/JSON documents that remember
where each of their nodes sits in the source text.

The linter needs two things PyYAML's `load` throws away: the line of every field (for
findings) and the character offsets of every node (for `--fix`, which edits the text in place).
So we compose the node graph ourselves (libyaml's C parser) and build the values from it as
kubectl would send them to the API server, not as PyYAML reads them (kubeyaml).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

import yaml

from webhook import kubeyaml

# libyaml's C parser composes nodes several times faster than the pure-Python one; the
# marks (line, column, character index) are the same either way.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The composer with kubectl's resolver (kubeyaml) and no path resolvers."""

    def descend_resolver(self, current_node: object, current_index: object) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode:
            if not implicit[0]:  # quoted, or plain with the `!` tag
                return kubeyaml.STR
            return kubeyaml.MERGE if value == "<<" else kubeyaml.plain_tag(value)
        return kubeyaml.SEQ if kind is yaml.SequenceNode else kubeyaml.MAP


STDIN = "-"
STDIN_NAME = "<stdin>"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Far above any real manifest (the API server's object limit is 1.5 MiB); the cap only stops
# an accidental `podlock lint /` from reading a disk image into memory.
MAX_BYTES = 32 * 1024 * 1024

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Document:
    """One YAML document: its value as kubectl sends it (kubeyaml), and its node graph."""

    value: object
    node: yaml.Node
    # Only plain mappings, sequences and scalars, each collection written once: no aliases
    # to collections, merge keys or unusual tags. Only such documents are fixed in place.
    plain: bool = True


class Unreadable(yaml.YAMLError):
    """A document that kubectl would refuse or read in a way other readers do not."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


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
    except Unreadable as e:
        return ParseError(name, e.line, e.message)
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
            builder = kubeyaml.Builder()
            try:
                value = builder.build(node)
            except kubeyaml.Refused as e:
                field = field_name(path_to(node, e.node))
                line = int(e.node.start_mark.line) + 1
                raise Unreadable(line, f"{field}: {e}") from None
            documents.append(Document(value, node, builder.plain))
        return tuple(documents)
    finally:
        loader.dispose()


def path_to(root: yaml.Node, target: yaml.Node) -> Path:
    """The path from the root to a node (a key node: to its mapping's entry); () if absent."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, Path]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key is target:  # a collection key has no name of its own
                    return (*path, key.value) if isinstance(key, yaml.ScalarNode) else path
                stack.append(
                    (value, (*path, key.value if isinstance(key, yaml.ScalarNode) else "?"))
                )
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, index)) for index, item in enumerate(node.value))
    return ()


def field_name(path: Path) -> str:
    """`spec.containers[0].securityContext.runAsUser`; `the document` for the root."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "the document"


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
            if isinstance(key, yaml.ScalarNode) and _json_key(key) == segment:
                return key, value
    elif (
        isinstance(node, yaml.SequenceNode)
        and isinstance(segment, int)
        and 0 <= segment < len(node.value)
    ):
        return None, node.value[segment]
    return None


def _json_key(key: yaml.ScalarNode) -> str | None:
    """The key as kubectl sends it: `on:` is "true", `1:` is "1"; None if kubectl refuses it."""
    if key.tag == kubeyaml.STR:
        return str(key.value)
    try:
        return kubeyaml.Builder().key(key)[0]
    except kubeyaml.Refused:
        return None


def line_of(root: yaml.Node, path: Path) -> int:
    """1-based line of the field at `path`, or of its nearest ancestor that exists.

    A mapping field's line is its key's line (`readOnlyRootFilesystem: false`), a list item's
    is the item's first line (`- name: app`).
    """
    found = locate(root, path)
    mark = (found.key or found.node).start_mark
    return int(mark.line) + 1
