"""Rules files in Falco's format → a validated, bound `RuleSet` (pure: takes texts).

Items, in file order, across files in the order given:

- `list`: `items` (names of earlier lists expand in place);
- `macro`: a named `condition`;
- `rule`: `desc`, `condition`, `output`, `priority`, `tags`, `enabled`, `exceptions`,
  `source`, `skip-if-unknown-filter`, and podlock's `aggregate` (see `Aggregate`);
- `required_engine_version` / `required_plugin_versions`: accepted and ignored.

Redefining an item replaces it; `append: true` (or Falco's newer
`override: {condition: append, items: replace, …}`) changes an earlier one; an item
with only `rule` and `enabled` switches an earlier rule on or off. Every macro and
rule is checked at load, and every problem is one sentence naming file, line, item.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import yaml
import yaml.constructor

from detector.alerts import PRIORITY_NAMES, Priority
from detector.condition.ast import (
    LIST_OPS,
    SYMBOL_OPS,
    WORD_OPS,
    And,
    Compare,
    ListValue,
    Node,
    Not,
    Op,
    Or,
    Value,
)
from detector.condition.binder import BindError, bind
from detector.condition.parser import ConditionSyntaxError, parse, position
from detector.errors import ConfigError
from detector.fields import BASELINE_OUTPUT_FIELDS, FIELDS, ArgMode, field_key

ENGINE_VERSION = "0.1.0"
_DEFAULT_SOURCE = "syscall"
_OUR_SOURCES = frozenset({"syscall", "podlock"})

FieldRef = tuple[str, str | None]  # (name, arg)


@dataclass(frozen=True)
class OutputTemplate:
    """`text %proc.name more`: literals and field references, in order."""

    text: str
    parts: tuple[str | FieldRef, ...]

    @property
    def fields(self) -> tuple[FieldRef, ...]:
        seen: dict[FieldRef, None] = {}
        for p in self.parts:
            if isinstance(p, tuple):
                seen[p] = None
        return tuple(seen)


@dataclass(frozen=True)
class Aggregate:
    """podlock's extension: fold a rule's matches into one alert per group.

    Matches of the rule with the same container and `by` key (`session`: the exec
    session, `process`: the process) form a group. The group's alert is emitted when
    the session leader (or process) exits, after `idle_ns` without a new match, or
    `max_open_ns` after the first match, whichever comes first. Its fields are the
    first match's, except: `podlock.agg.items` lists the first `max_items` distinct
    values of `collect`, `podlock.agg.count` counts the distinct values, and each field
    in `union` becomes the sorted distinct values it took, comma-separated.
    """

    by: Literal["session", "process"]
    collect: FieldRef = ("fd.name", None)
    max_items: int = 20
    idle_ns: int = 1_000_000_000
    max_open_ns: int = 60_000_000_000
    union: tuple[FieldRef, ...] = ()


@dataclass(frozen=True)
class Rule:
    name: str
    desc: str
    condition_text: str
    condition: Node  # bound: fields looked up, macros inlined
    output: OutputTemplate
    priority: Priority
    tags: tuple[str, ...]
    enabled: bool
    origin: str  # "file, line N", for messages
    aggregate: Aggregate | None = None

    @property
    def output_refs(self) -> tuple[tuple[str, str, str | None], ...]:
        """(key, field, arg) of this rule's alerts' output_fields, sorted by key: the
        template's fields, the baseline fields, and the aggregate fields."""
        refs = {field_key(n, a): (n, a) for n, a in self.output.fields}
        refs.update((name, (name, None)) for name in BASELINE_OUTPUT_FIELDS)
        if self.aggregate is not None:
            refs.update((n, (n, None)) for n in ("podlock.agg.count", "podlock.agg.items"))
        return tuple((k, n, a) for k, (n, a) in sorted(refs.items()))


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)


# --- loading -----------------------------------------------------------------------------


@dataclass
class _Item:
    kind: Literal["rule", "macro", "list"]
    name: str
    body: dict[str, Any]
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"rules file {self.file}, line {self.line}, {self.kind} '{self.name}'"


_RULE_KEYS = frozenset(
    {
        "rule", "desc", "condition", "output", "priority", "tags", "enabled", "exceptions",
        "source", "append", "override", "skip-if-unknown-filter", "warn_evttypes", "aggregate",
        "capture", "capture_duration",
    }
)  # fmt: skip
_MACRO_KEYS = frozenset({"macro", "condition", "append", "override"})
_LIST_KEYS = frozenset({"list", "items", "append", "override"})
_OVERRIDABLE = {
    "rule": frozenset({"condition", "output", "desc", "priority", "tags", "exceptions", "enabled"}),
    "macro": frozenset({"condition"}),
    "list": frozenset({"items"}),
}
_APPENDABLE = {
    "rule": frozenset({"condition", "output", "desc", "tags", "exceptions"}),
    "macro": frozenset({"condition"}),
    "list": frozenset({"items"}),
}


def load_rules(sources: Sequence[tuple[str, str]]) -> RuleSet:
    """Load (file name, text) pairs in order; raises ConfigError on the first problem."""
    loader = _Loader()
    for filename, text in sources:
        for line, data in _yaml_items(filename, text):
            loader.add(filename, line, data)
    return loader.finish()


class _Constructor(yaml.constructor.SafeConstructor):
    """Safe YAML, plus a bare `=` (YAML's "value" tag) read as the string `=`, because
    Falco's rules write `comps: [=, in]`."""


_Constructor.add_constructor(
    "tag:yaml.org,2002:value",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)


def _yaml_items(filename: str, text: str) -> list[tuple[int, Any]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            return []
        if not isinstance(root, yaml.SequenceNode):
            raise ConfigError(
                f"rules file {filename}, line {root.start_mark.line + 1}: expected a list of "
                "rule, macro and list items"
            )
        constructor = _Constructor()
        return [(n.start_mark.line + 1, constructor.construct_document(n)) for n in root.value]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"rules file {filename}{where}: not valid YAML: {problem}") from None


class _Loader:
    def __init__(self) -> None:
        self.lists: dict[str, _Item] = {}
        self.macros: dict[str, _Item] = {}
        self.rules: dict[str, _Item] = {}
        self.warnings: list[str] = []

    # phase 1: collect, applying appends and overrides in order
    def add(self, file: str, line: int, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"rules file {file}, line {line}: expected a mapping, found {data!r}")
        if "required_engine_version" in data or "required_plugin_versions" in data:
            return
        kinds = [k for k in ("rule", "macro", "list") if k in data]
        if len(kinds) != 1:
            raise ConfigError(
                f"rules file {file}, line {line}: an item needs exactly one of rule, macro, list"
            )
        kind: Literal["rule", "macro", "list"] = kinds[0]  # type: ignore[assignment]
        name = data[kind]
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"rules file {file}, line {line}: {kind} needs a name")
        item = _Item(kind, name, dict(data), file, line)
        allowed = {"rule": _RULE_KEYS, "macro": _MACRO_KEYS, "list": _LIST_KEYS}[kind]
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise ConfigError(f"{item.where}: unknown key '{unknown[0]}'")
        table = {"rule": self.rules, "macro": self.macros, "list": self.lists}[kind]
        previous = table.get(name)
        modes = self._modes(item)
        if modes:
            if previous is None:
                raise ConfigError(f"{item.where}: append/override of a {kind} not defined earlier")
            self._merge(previous, item, modes)
            return
        if kind == "rule" and previous is not None and set(data) <= {"rule", "enabled"}:
            previous.body["enabled"] = self._bool(item, "enabled", True)
            return
        if kind == "rule" and set(data) <= {"rule", "enabled"}:
            raise ConfigError(f"{item.where}: only 'enabled' given for a rule not defined earlier")
        table[name] = item

    def _modes(self, item: _Item) -> dict[str, str]:
        body = item.body
        modes: dict[str, str] = {}
        if body.get("append") is True:
            modes = {k: "append" for k in body if k in _APPENDABLE[item.kind]}
        elif "append" in body and body["append"] not in (False, None):
            raise ConfigError(f"{item.where}: 'append' must be true or false")
        override = body.get("override")
        if override is not None:
            if not isinstance(override, dict):
                raise ConfigError(f"{item.where}: 'override' must map keys to append or replace")
            for key, mode in override.items():
                allowed = _APPENDABLE if mode == "append" else _OVERRIDABLE
                if mode not in ("append", "replace") or key not in allowed[item.kind]:
                    raise ConfigError(f"{item.where}: cannot {mode} '{key}' of a {item.kind}")
                if key not in body:
                    raise ConfigError(f"{item.where}: override of '{key}' without a '{key}' value")
                modes[str(key)] = str(mode)
        return modes

    def _merge(self, previous: _Item, item: _Item, modes: dict[str, str]) -> None:
        for key, mode in modes.items():
            new = item.body[key]
            if mode == "replace" or key not in previous.body:
                previous.body[key] = new
            elif isinstance(new, str) and isinstance(previous.body[key], str):
                previous.body[key] = f"{previous.body[key]} {new}"
            elif isinstance(new, list) and isinstance(previous.body[key], list):
                previous.body[key] = previous.body[key] + new
            else:
                raise ConfigError(f"{item.where}: cannot append '{key}' of a different type")

    # phase 2: resolve and check everything
    def finish(self) -> RuleSet:
        self.list_values = {name: self._expand_list(name, ()) for name in self.lists}
        self.bound_macros: dict[str, Node] = {}
        self.binding: list[str] = []
        for name in self.macros:
            try:
                self._macro(name, 0, None)
            except _ConditionError as err:
                raise ConfigError(str(err)) from None
        rules = []
        for item in self.rules.values():
            rule = self._rule(item)
            if rule is not None:
                rules.append(rule)
        return RuleSet(tuple(rules), tuple(self.warnings))

    def _expand_list(self, name: str, stack: tuple[str, ...]) -> tuple[str, ...]:
        item = self.lists[name]
        raw = item.body.get("items", [])
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise ConfigError(f"{item.where}: 'items' must be a list")
        out: list[str] = []
        for value in raw:
            if isinstance(value, dict | list):
                raise ConfigError(f"{item.where}: list items must be plain values, not {value!r}")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if text in self.lists and text != name:
                if text in stack:
                    raise ConfigError(
                        f"{item.where}: lists '{name}' and '{text}' include each other"
                    )
                out.extend(self._expand_list(text, (*stack, name)))
            else:
                out.append(text)
        return tuple(out)

    def _macro(self, name: str, pos: int, user: _Item | None) -> Node | None:
        if name in self.bound_macros:
            return self.bound_macros[name]
        item = self.macros.get(name)
        if item is None:
            return None
        if name in self.binding:
            raise ConfigError(f"{item.where}: macros {' → '.join([*self.binding, name])} loop")
        self.binding.append(name)
        try:
            text = self._text(item, "condition")
            node = self._bind_text(item, text)
        finally:
            self.binding.pop()
        self.bound_macros[name] = node
        return node

    def _bind_text(self, item: _Item, text: str) -> Node:
        try:
            return bind(parse(text), self.list_values, lambda n, p: self._macro(n, p, item), FIELDS)
        except ConditionSyntaxError as err:
            raise _ConditionError(item, text, err) from None

    def _rule(self, item: _Item) -> Rule | None:
        body = item.body
        source = body.get("source", _DEFAULT_SOURCE)
        if source not in _OUR_SOURCES:
            self.warnings.append(f"{item.where}: skipped, source '{source}' is not syscall events")
            return None
        for key in ("condition", "output", "priority"):
            if key not in body:
                raise ConfigError(f"{item.where}: missing '{key}'")
        text = self._text(item, "condition")
        try:
            node = self._bind_text(item, text)
        except _ConditionError as err:
            if body.get("skip-if-unknown-filter") is True and "unknown field" in err.detail:
                self.warnings.append(f"{err}; rule skipped (skip-if-unknown-filter)")
                return None
            raise ConfigError(str(err)) from None
        node = self._with_exceptions(item, node)
        priority = Priority.parse(str(body["priority"]))
        if priority is None:
            raise ConfigError(
                f"{item.where}: unknown priority '{body['priority']}' (one of {PRIORITY_NAMES})"
            )
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str | int) for t in tags):
            raise ConfigError(f"{item.where}: 'tags' must be a list of strings")
        desc = body.get("desc", "")
        if not isinstance(desc, str):
            raise ConfigError(f"{item.where}: 'desc' must be a string")
        aggregate = _aggregate(item, body.get("aggregate"))
        output = parse_output(self._text(item, "output"), item.where)
        return Rule(
            name=item.name,
            desc=desc.strip(),
            condition_text=text,
            condition=node,
            output=output,
            priority=priority,
            tags=tuple(str(t) for t in tags),
            enabled=self._bool(item, "enabled", True),
            origin=f"{item.file}, line {item.line}",
            aggregate=aggregate,
        )

    def _text(self, item: _Item, key: str) -> str:
        value = item.body.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{item.where}: '{key}' must be a non-empty string")
        return value.strip()

    def _bool(self, item: _Item, key: str, default: bool) -> bool:
        value = item.body.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{item.where}: '{key}' must be true or false")
        return value

    def _with_exceptions(self, item: _Item, node: Node) -> Node:
        raw = item.body.get("exceptions") or []
        if not isinstance(raw, list):
            raise ConfigError(f"{item.where}: 'exceptions' must be a list")
        excluded: list[Node] = []
        for exc in raw:
            excluded.extend(self._exception(item, exc))
        if not excluded:
            return node
        return And((node, Not(Or(tuple(excluded)))))

    def _exception(self, item: _Item, exc: Any) -> list[Node]:
        """Falco's exceptions: each `values` entry excludes events matching all its fields."""
        if not isinstance(exc, dict) or not isinstance(exc.get("name"), str):
            raise ConfigError(f"{item.where}: each exception needs a 'name'")
        where = f"{item.where}, exception '{exc['name']}'"
        fields, comps, values = exc.get("fields"), exc.get("comps"), exc.get("values") or []
        if not isinstance(values, list):
            raise ConfigError(f"{where}: 'values' must be a list")
        single = isinstance(fields, str)
        names: list[str] = [fields] if single else list(fields or [])  # type: ignore[list-item]
        if not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}: 'fields' must be a field or a list of fields")
        if comps is None:
            ops = ["in" if single else "="] * len(names)
        else:
            ops = [comps] if isinstance(comps, str) else list(comps)
        if len(ops) != len(names):
            raise ConfigError(f"{where}: 'comps' needs one operator per field")
        rows = [values] if single and values else ([] if single else values)
        out: list[Node] = []
        for row in rows:
            cells = row if isinstance(row, list) and not single else [row]
            if len(cells) != len(names):
                raise ConfigError(f"{where}: value {row!r} needs one entry per field")
            parts: list[Node] = []
            for fname, op_text, cell in zip(names, ops, cells, strict=True):
                op = SYMBOL_OPS.get(str(op_text)) or WORD_OPS.get(str(op_text))
                if op is None or op is Op.EXISTS:
                    raise ConfigError(f"{where}: unknown comparison '{op_text}'")
                fname_base, _, arg = fname.partition("[")
                operand: Value | ListValue
                if op in LIST_OPS:
                    seq = cell if isinstance(cell, list) else [cell]
                    operand = ListValue(
                        tuple(Value(str(v), isinstance(cell, list), 0) for v in seq), 0
                    )
                else:
                    operand = Value(str(cell), True, 0)
                parts.append(Compare(fname_base, arg.rstrip("]") or None, op, operand, 0))
            try:
                out.append(bind(And(tuple(parts)), self.list_values, lambda n, p: None, FIELDS))
            except BindError as err:
                raise ConfigError(f"{where}: {err.message}") from None
        return out


class _ConditionError(Exception):
    def __init__(self, item: _Item, text: str, err: ConditionSyntaxError) -> None:
        self.detail = err.message
        near = text[err.pos : err.pos + 20].split("\n", 1)[0]
        super().__init__(
            f"{item.where}: {err.message} {position(text, err.pos)} of the condition"
            + (f" (near '{near}')" if near else "")
        )


_OUTPUT_FIELD = re.compile(r"%([A-Za-z_][A-Za-z0-9_.]*[A-Za-z0-9_])(?:\[([^\]]*)\])?")


def parse_output(text: str, where: str) -> OutputTemplate:
    """Split an output template into literals and `%field` references, checking each field."""
    parts: list[str | FieldRef] = []
    last = 0
    for m in _OUTPUT_FIELD.finditer(text):
        name, arg = m.group(1), m.group(2)
        fdef = FIELDS.get(name)
        if fdef is None:
            raise ConfigError(f"{where}: unknown field '%{name}' in output")
        if fdef.arg is ArgMode.REQUIRED and not arg:
            raise ConfigError(f"{where}: field '%{name}' in output needs an argument, like [x]")
        if fdef.arg is ArgMode.NONE and arg is not None:
            # `%proc.name[` is not an argument Falco would read: keep it as text
            arg = None
            end = m.start(0) + 1 + len(name)
        else:
            end = m.end(0)
        if m.start(0) > last:
            parts.append(text[last : m.start(0)])
        parts.append((name, arg))
        last = end
    if last < len(text):
        parts.append(text[last:])
    return OutputTemplate(text, tuple(parts))


def _duration_ns(value: Any, where: str, key: str) -> int:
    """`1s`, `500ms`, `2m`, or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value * 1_000_000_000)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*", str(value))
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"{where}: aggregate '{key}' must be a duration like 1s or 500ms")
    scale = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _field_ref(value: Any, where: str, key: str) -> FieldRef:
    m = re.fullmatch(r"([A-Za-z0-9_.]+)(?:\[([^\]]*)\])?", str(value))
    fdef = FIELDS.get(m.group(1)) if m else None
    if m is None or fdef is None or fdef.output_only:
        raise ConfigError(f"{where}: aggregate '{key}' names unknown field '{value}'")
    return (m.group(1), m.group(2))


def _aggregate(item: _Item, raw: Any) -> Aggregate | None:
    if raw is None:
        return None
    where = item.where
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'aggregate' must be a mapping")
    unknown = sorted(set(raw) - {"by", "collect", "max_items", "idle", "max_open", "union"})
    if unknown:
        raise ConfigError(f"{where}: unknown aggregate key '{unknown[0]}'")
    if raw.get("by") not in ("session", "process"):
        raise ConfigError(f"{where}: aggregate 'by' must be session or process")
    agg = Aggregate(by=raw["by"])
    if "collect" in raw:
        agg = replace(agg, collect=_field_ref(raw["collect"], where, "collect"))
    if "max_items" in raw:
        n = raw["max_items"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"{where}: aggregate 'max_items' must be a whole number")
        agg = replace(agg, max_items=n)
    if "idle" in raw:
        agg = replace(agg, idle_ns=_duration_ns(raw["idle"], where, "idle"))
    if "max_open" in raw:
        agg = replace(agg, max_open_ns=_duration_ns(raw["max_open"], where, "max_open"))
    union = raw.get("union") or []
    if not isinstance(union, list):
        raise ConfigError(f"{where}: aggregate 'union' must be a list of fields")
    return replace(agg, union=tuple(_field_ref(u, where, "union") for u in union))


__all__ = [
    "ENGINE_VERSION",
    "Aggregate",
    "OutputTemplate",
    "Rule",
    "RuleSet",
    "load_rules",
    "parse_output",
]
