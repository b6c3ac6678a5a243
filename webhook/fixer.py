"""`podlock lint --fix`: write the hardening plan into the manifest's own text.

Round-tripping through a YAML dumper would lose comments, quoting, key order and the file's
layout. Instead every "add" op becomes a text insertion at a position taken from the node
marks: a new `key: value` line in a block mapping at its keys' indentation, a new `- item` in
a block sequence at its dashes' indentation, or `, value` inside a flow collection (JSON keeps
its indentation unit). Nothing else in the file changes, so a diff shows only added lines
(plus the line that receives an inline flow addition).

The caller re-parses the result and compares it with `hardening.apply`; a file whose edit
does not reproduce the plan exactly is left untouched (see `lint.py`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from webhook import kubeyaml, manifests
from webhook.hardening import Add
from webhook.podspecs import Path

_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./\-]*\Z")


class CannotFix(Exception):
    """The text cannot take this op safely (str() says why, in one sentence)."""


@dataclass(frozen=True)
class Edit:
    start: int  # character offset into the source text
    end: int  # == start for an insertion
    text: str
    depth: int  # nesting depth of the target: deeper edits go first at the same offset
    order: int


@dataclass(frozen=True)
class Style:
    """How this file writes things, so insertions look like their neighbours."""

    newline: str  # "\n" or "\r\n"
    indent: int  # block mapping indentation step
    indent_sequences: bool  # `key:\n  - item` (True) or `key:\n- item` (False)

    @staticmethod
    def of(text: str, roots: Sequence[yaml.Node]) -> Style:
        first_break = text.find("\n")
        newline = "\r\n" if first_break > 0 and text[first_break - 1] == "\r" else "\n"
        indent, indent_sequences = 2, True
        found_indent = found_sequence = False
        stack = list(roots)
        # Look at the first block mapping nested in another, and the first block sequence
        # that is a mapping value; the whole file is assumed to follow them.
        while stack and not (found_indent and found_sequence):
            node = stack.pop()
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if _is_block(value) and value.start_mark.line > key.start_mark.line:
                        step = value.start_mark.column - key.start_mark.column
                        if isinstance(value, yaml.MappingNode) and not found_indent and step > 0:
                            indent, found_indent = step, True
                        if isinstance(value, yaml.SequenceNode) and not found_sequence:
                            indent_sequences, found_sequence = step > 0, True
                stack.extend(v for _, v in reversed(node.value))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(reversed(node.value))
        return Style(newline, indent, indent_sequences)


@dataclass
class _Group:
    """Pending additions to one existing collection node."""

    node: yaml.Node
    depth: int
    items: list[Any] = field(default_factory=list)  # sequence appends
    pairs: list[tuple[str, Any]] = field(default_factory=list)  # new mapping keys


def plan_edits(
    text: str, root: yaml.Node, prefix: Path, ops: Sequence[Add], style: Style, order: int = 0
) -> list[Edit]:
    """Text edits that apply `ops` (paths relative to the pod spec at `prefix`) to one document."""
    groups: dict[int, _Group] = {}
    created: dict[Path, Any] = {}  # values of new keys, by absolute path: later ops may extend them
    replacements: list[tuple[tuple[yaml.Node, yaml.Node], Any, int]] = []
    for op in ops:
        path = (*prefix, *op.path)
        if not path:
            raise CannotFix("an op has an empty path")
        parent_path, last = path[:-1], path[-1]
        if _extend_created(created, parent_path, last, op.value):
            continue
        parent = _resolve(root, parent_path)
        value = copy.deepcopy(op.value)
        if last == "-":
            if not isinstance(parent, yaml.SequenceNode):
                raise CannotFix(f"{_show(parent_path)} is not a list in the text")
            group = groups.setdefault(id(parent), _Group(parent, len(parent_path)))
            group.items.append(value)
        elif isinstance(last, str):
            if not isinstance(parent, yaml.MappingNode):
                raise CannotFix(f"{_show(parent_path)} is not a mapping in the text")
            existing = manifests.child_of(parent, last)
            if existing is not None and existing[0] is not None:
                replacements.append(((existing[0], existing[1]), value, len(parent_path)))
            else:
                group = groups.setdefault(id(parent), _Group(parent, len(parent_path)))
                group.pairs.append((last, value))
            created[path] = value
        else:
            raise CannotFix(f"cannot add at list index {_show(path)}")
    # Rendered last: later ops may still extend the values (see _extend_created).
    edits = [
        _replace_null(text, found, value, root, depth, order)
        for found, value, depth in replacements
    ]
    for group in groups.values():
        edits.append(_render_group(text, group, root, style, order))
    return edits


def apply_edits(text: str, edits: Sequence[Edit]) -> str:
    """Apply edits; at one offset the deeper target's text comes first."""
    ordered = sorted(edits, key=lambda e: (e.start, -e.depth, e.order))
    out: list[str] = []
    position = 0
    for edit in ordered:
        if edit.start < position:
            raise CannotFix("two edits overlap")
        out.append(text[position : edit.start])
        out.append(edit.text)
        position = edit.end
    out.append(text[position:])
    return "".join(out)


# --- finding the place ------------------------------------------------------------------


def _resolve(root: yaml.Node, path: Path) -> yaml.Node:
    found = manifests.locate(root, path)
    if found.depth < len(path):
        # e.g. a field that comes from a `<<` merge key: the text has no place for it.
        raise CannotFix(f"{_show(path)} is not written out in the text")
    return found.node


def _extend_created(
    created: dict[Path, Any], parent_path: Path, last: str | int, value: Any
) -> bool:
    """Apply an op inside a value that an earlier op adds (not yet in the text)."""
    for base, new_value in created.items():
        if parent_path[: len(base)] != base:
            continue
        target = new_value
        for step in parent_path[len(base) :]:
            target = target[step]
        if last == "-":
            target.append(copy.deepcopy(value))
        else:
            target[last] = copy.deepcopy(value)
        return True
    return False


def _show(path: Path) -> str:
    return "/" + "/".join(str(p) for p in path)


def _is_block(node: yaml.Node) -> bool:
    return isinstance(node, yaml.CollectionNode) and not node.flow_style


def _is_empty_scalar(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.start_mark.index == node.end_mark.index


def _content_end(node: yaml.Node) -> int:
    """Offset just after the last character that belongs to the node (not its comments)."""
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        key, value = node.value[-1]
        return _content_end(key if _is_empty_scalar(value) else value)
    if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        item = node.value[-1]
        if _is_empty_scalar(item):
            raise CannotFix("a list ends with an empty item")
        return _content_end(item)
    return int(node.end_mark.index)


def _line_after(text: str, offset: int) -> tuple[int, bool]:
    """Where a new line goes after the content ending at `offset`: (offset, needs a newline)."""
    if offset > 0 and text[offset - 1] == "\n":  # a block scalar ends at a line start
        return offset, False
    end = text.find("\n", offset)
    if end < 0:
        return len(text), True  # the file does not end with a newline
    return end + 1, False


def _line_indent(text: str, offset: int) -> str:
    start = text.rfind("\n", 0, offset) + 1
    line = text[start:offset]
    return line[: len(line) - len(line.lstrip(" \t"))]


# --- rendering --------------------------------------------------------------------------


def _render_group(text: str, group: _Group, root: yaml.Node, style: Style, order: int) -> Edit:
    node = group.node
    if _is_block(node):
        offset, needs_newline = _line_after(text, _content_end(node))
        if isinstance(node, yaml.SequenceNode):
            dash = node.start_mark.column
            first = node.value[0]
            content = (
                first.start_mark.column
                if first.start_mark.line == node.start_mark.line
                else dash + 2
            )
            lines = [ln for item in group.items for ln in _block_item(item, dash, content, style)]
        else:
            column = node.value[0][0].start_mark.column
            lines = [
                ln for key, value in group.pairs for ln in _block_pair(key, value, column, style)
            ]
        body = "".join(line + style.newline for line in lines)
        if needs_newline:
            body = style.newline + body.removesuffix(style.newline)
        return Edit(offset, offset, body, group.depth, order)
    return _flow_edit(text, group, root, style, order)


def _flow_edit(text: str, group: _Group, root: yaml.Node, style: Style, order: int) -> Edit:
    node = group.node
    flavor = _Flavor.of(node, root)
    values: list[Any]
    if isinstance(node, yaml.SequenceNode):
        entries = [_flow(item, flavor) for item in group.items]
        values = group.items
        first = node.value[0] if node.value else None
        last = node.value[-1] if node.value else None
    else:
        entries = [f"{flavor.key(k)}: {_flow(v, flavor)}" for k, v in group.pairs]
        values = [v for _, v in group.pairs]
        first = node.value[0][0] if node.value else None
        last = node.value[-1][1] if node.value else None
    if first is None or last is None:  # empty: `[]` or `{}`
        opening = node.start_mark.index
        if text[opening] not in "[{":
            raise CannotFix("cannot find the opening bracket of an empty collection")
        return Edit(opening + 1, opening + 1, ", ".join(entries), group.depth, order)
    last_end = int(last.end_mark.index)
    # Members each on their own line, brackets too (pretty-printed JSON): new members likewise.
    if first.start_mark.line > node.start_mark.line and node.end_mark.line > last.end_mark.line:
        member_indent = _line_indent(text, first.start_mark.index)
        outer = _line_indent(text, node.start_mark.index)
        unit = member_indent[len(outer) :] if member_indent.startswith(outer) else "  "
        body = ""
        keys = [None] * len(values) if group.items else [k for k, _ in group.pairs]
        for key, value in zip(keys, values, strict=True):
            entry = _pretty(value, unit, flavor, 0)
            if key is not None:
                entry = f"{flavor.key(key)}: {entry}"
            body += "," + style.newline + member_indent
            body += entry.replace("\n", style.newline + member_indent)
    else:
        body = "".join(", " + entry for entry in entries)
    return Edit(last_end, last_end, body, group.depth, order)


@dataclass(frozen=True)
class _Flavor:
    """How a flow collection writes keys and string values."""

    quote_keys: bool  # "key": (JSON) or key:
    json_values: bool  # every string double-quoted, as JSON (and JSON-style YAML) does

    @staticmethod
    def of(node: yaml.Node, root: yaml.Node) -> _Flavor:
        json_like = _json_like(root)
        quoted = _quoted_keys(node)
        return _Flavor(json_like if quoted is None else quoted, json_like or bool(quoted))

    def key(self, key: str) -> str:
        return json.dumps(key) if self.quote_keys else _scalar(key)

    def scalar(self, value: Any) -> str:
        return json.dumps(value) if self.json_values else _scalar(value)


def _pretty(value: Any, unit: str, flavor: _Flavor, level: int) -> str:
    """Like json.dumps(value, indent=unit), in the collection's flavor."""
    inner, outer = "\n" + unit * (level + 1), "\n" + unit * level
    if isinstance(value, dict) and value:
        members = [
            f"{flavor.key(str(k))}: {_pretty(v, unit, flavor, level + 1)}" for k, v in value.items()
        ]
        return "{" + inner + ("," + inner).join(members) + outer + "}"
    if isinstance(value, list) and value:
        members = [_pretty(v, unit, flavor, level + 1) for v in value]
        return "[" + inner + ("," + inner).join(members) + outer + "]"
    return flavor.scalar(value)


def _json_like(root: yaml.Node) -> bool:
    """A document written as one flow collection (JSON, or YAML in JSON style)."""
    return isinstance(root, yaml.CollectionNode) and root.flow_style is True


def _quoted_keys(node: yaml.Node) -> bool | None:
    """Whether the collection's (or its first mapping item's) keys are written "quoted";
    None when there is no key to look at."""
    if isinstance(node, yaml.SequenceNode):
        node = next((i for i in node.value if isinstance(i, yaml.MappingNode) and i.value), node)
    if isinstance(node, yaml.MappingNode) and node.value:
        return _style(node.value[0][0]) == '"'
    return None


def _style(node: yaml.Node) -> str | None:
    return node.style if isinstance(node, yaml.ScalarNode) else None


def _replace_null(
    text: str,
    found: tuple[yaml.Node, yaml.Node],
    value: Any,
    root: yaml.Node,
    depth: int,
    order: int,
) -> Edit:
    """`key:` / `key: null` / `key: ~` that the plan fills: replace the null in place."""
    key, old = found
    if not (isinstance(old, yaml.ScalarNode) and old.tag == "tag:yaml.org,2002:null"):
        raise CannotFix("the plan adds a key that already has a value")
    quoted = _style(key) == '"'
    rendered = _flow(value, _Flavor(quoted, quoted or _json_like(root)))
    if _is_empty_scalar(old):
        colon = text.find(":", key.end_mark.index)
        if colon < 0 or text[key.end_mark.index : colon].strip():
            raise CannotFix("cannot find the ':' after a key")
        return Edit(colon + 1, colon + 1, " " + rendered, depth, order)
    return Edit(old.start_mark.index, old.end_mark.index, rendered, depth, order)


def _scalar(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        # Plain only when kubectl reads it back as this string (not `y`, `0o7`, `1e3`, `~`).
        plain = _PLAIN.match(value) is not None and kubeyaml.plain_tag(value) == kubeyaml.STR
        return value if plain else json.dumps(value)
    if value == {}:
        return "{}"
    if value == []:
        return "[]"
    raise CannotFix(f"cannot render a {type(value).__name__} value")


def _flow(value: Any, flavor: _Flavor) -> str:
    """One-line flow rendering: `{name: x, emptyDir: {}}` or JSON."""
    if isinstance(value, dict) and value:
        members = (f"{flavor.key(str(k))}: {_flow(v, flavor)}" for k, v in value.items())
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list) and value:
        return "[" + ", ".join(_flow(v, flavor) for v in value) + "]"
    return flavor.scalar(value)


def _block_pair(key: str, value: Any, column: int, style: Style) -> list[str]:
    pad = " " * column
    if isinstance(value, dict) and value:
        return [f"{pad}{_scalar(key)}:"] + [
            line
            for k, v in value.items()
            for line in _block_pair(str(k), v, column + style.indent, style)
        ]
    if isinstance(value, list) and value:
        dash = column + (style.indent if style.indent_sequences else 0)
        return [f"{pad}{_scalar(key)}:"] + [
            line for item in value for line in _block_item(item, dash, dash + 2, style)
        ]
    return [f"{pad}{_scalar(key)}: {_scalar(value)}"]


def _block_item(item: Any, dash: int, content: int, style: Style) -> list[str]:
    lead = " " * dash + "-" + " " * max(1, content - dash - 1)
    if isinstance(item, dict) and item:
        lines = [line for k, v in item.items() for line in _block_pair(str(k), v, content, style)]
        return [lead + lines[0][content:], *lines[1:]]
    if isinstance(item, list) and item:
        return [lead + _flow(item, _Flavor(False, False))]
    return [lead + _scalar(item)]
