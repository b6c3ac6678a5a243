"""YAML values as kubectl sends them: the scalars, keys and merges of sigs.k8s.io/yaml.

`kubectl apply -f` (and create, replace, Helm) reads YAML through sigs.k8s.io/yaml: its fork of
go-yaml v2 decodes the text (YAML 1.1 with Go's number syntax), then the value is converted to
JSON, which is what the API server receives. PyYAML reads many plain scalars otherwise:

    spelling              kubectl sends   PyYAML reads      (checked against kubectl 1.37)
    y, Y, n, N            true / false    "y", "n"
    0o17, 0O17, 0X1F, 0B1 15, 31, 1       strings
    1e3, 0e0, 1.5e3, 1.e5 1000, 0, ...    strings (YAML 1.1 floats need a dot and a signed exponent)
    1:20                  "1:20"          80 (sexagesimal)
    2001-12-14            "2001-12-14"    a date
    1.0, -0.0, 1e-400     1, 0, 0         floats (JSON has one number type; Go prints 1.0 as 1)
    =                     "="             an error (the YAML 1.1 `value` tag)
    on: (as a key)        "true"          True
    `<<` after a key      the merge wins  the key wins

So a manifest could say `runAsUser: 0e0` (root to kubectl, a string to PyYAML) or
`privileged: y`. Here the composer's node graph is turned into the values kubectl would send,
and what kubectl itself refuses, or what YAML readers disagree on, is refused (`Refused`)
instead of guessed: a non-finite number, a null or collection key, an explicit tag the text
does not fit, a cyclic alias, two keys that become the same JSON key, and a key that a later
`<<` merge also sets (kubectl lets the merge win; kustomize, go-yaml v3 and PyYAML the key).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from typing import Any

import yaml

STR = "tag:yaml.org,2002:str"
MAP = "tag:yaml.org,2002:map"
SEQ = "tag:yaml.org,2002:seq"
NULL = "tag:yaml.org,2002:null"
BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_BINARY = "tag:yaml.org,2002:binary"

Scalar = bool | int | float | str | None

# go-yaml v2's table of words; everything else is a number or a string.
_WORDS: dict[str, tuple[str, Scalar]] = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE"), (BOOL, True)),
    **dict.fromkeys(("on", "On", "ON"), (BOOL, True)),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE"), (BOOL, False)),
    **dict.fromkeys(("off", "Off", "OFF"), (BOOL, False)),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), (NULL, None)),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), (FLOAT, math.nan)),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), (FLOAT, math.inf)),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), (FLOAT, -math.inf)),
}
# Go's strconv.ParseUint(s, 0, 64) syntax (underscores are removed before): 0x, 0o, 0b
# prefixes in either case, a leading 0 for octal, else decimal.
_GO_UINT = re.compile(
    r"(?:0[xX](?P<x>[0-9a-fA-F]+)|0[oO](?P<o>[0-7]+)|0[bB](?P<b>[01]+)|0(?P<z>[0-7]*)"
    r"|(?P<d>[1-9][0-9]*))\Z"
)
_BASES = {"x": 16, "o": 8, "b": 2, "z": 8, "d": 10}
_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?\Z")
_INT64 = 1 << 63
_UINT64 = 1 << 64

# Plain scalar text -> (tag, value). Manifests repeat the same keys and values endlessly;
# short texts only, and at most _RESOLVED_MAX of them (then resolved each time).
_RESOLVED: dict[str, tuple[str, Scalar]] = {}
_RESOLVED_MAX = 100_000


def resolve(text: str) -> tuple[str, Scalar]:
    """The tag and value kubectl gives a plain (unquoted) scalar; dates stay strings."""
    found = _RESOLVED.get(text)
    if found is None:
        found = _resolve(text)
        if len(text) <= 64 and len(_RESOLVED) < _RESOLVED_MAX:
            _RESOLVED[text] = found
    return found


def _resolve(text: str) -> tuple[str, Scalar]:
    word = _WORDS.get(text)
    if word is not None:
        return word
    first = text[:1]
    if first == ".":
        if _DOT_FLOAT.match(text):
            number = float(text)
            if not math.isinf(number):
                return FLOAT, json_number(number)
    elif first and first in "+-0123456789":
        return _number(text)
    return STR, text


def _number(text: str) -> tuple[str, Scalar]:
    """go-yaml v2: ParseInt, ParseUint, a float, the `0b` fallbacks; or text."""
    plain = text.replace("_", "")
    signed = _go_uint(plain[1:] if plain[:1] in "+-" else plain)
    if signed is not None:
        value = -signed if plain[:1] == "-" else signed
        if -_INT64 <= value < _INT64:
            return INT, value
    unsigned = _go_uint(plain)
    if unsigned is not None and unsigned < _UINT64:
        return INT, _json_int(unsigned)
    if _GO_FLOAT.match(plain):
        number = float(plain)
        if not math.isinf(number):  # Go reports overflow as an error; underflow is 0
            return FLOAT, json_number(number)
    if plain.startswith(("0b", "-0b")):
        # ParseInt(rest, 2) after the prefix, which takes a sign of its own: `0b-1` is -1.
        rest = plain[2:] if plain[0] == "0" else "-" + plain[3:]
        sign = -1 if rest[:1] == "-" else 1
        digits = rest[1:] if rest[:1] in "+-" else rest
        if digits and set(digits) <= {"0", "1"}:
            value = sign * int(digits, 2)
            if -_INT64 <= value < _INT64 or (0 <= value < _UINT64 and rest[:1] not in "+-"):
                return INT, _json_int(value)
    return STR, text  # hex, octal or binary beyond 64 bits too


def _json_int(value: int) -> int | float:
    # kubectl decodes JSON numbers into int64 or else float64.
    return value if -_INT64 <= value < _INT64 else float(value)


def _go_uint(text: str) -> int | None:
    match = _GO_UINT.match(text)
    if match is None:
        return None
    base = match.lastgroup
    assert base is not None
    digits = match.group(base)
    return int(digits, _BASES[base]) if digits else 0


def json_number(number: float) -> int | float:
    """A float as it comes back from kubectl's JSON: Go prints 1.0 and -0.0 as 1 and -0,
    which kubectl reads back as int64 when they fit."""
    if number.is_integer() and -_INT64 <= number < _INT64:
        return int(number)
    return number


def plain_tag(text: str) -> str:
    """What a plain scalar with this text means to kubectl (STR when it stays a string)."""
    return resolve(text)[0]


class Refused(Exception):
    """kubectl would refuse the node, or YAML readers disagree on it: `str()` says why."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node


class Builder:
    """Values from a composed node graph, as kubectl sends them (JSON types, string keys).

    Collections are memoised by node so an alias shares one value. `plain` stays True for a
    document that `--fix` may edit in place: no alias to a collection, no merge, no tag.
    """

    def __init__(self) -> None:
        self.memo: dict[int, object] = {}
        self.open: set[int] = set()  # collections being built: meeting one again is a cycle
        self.plain = True

    def build(self, node: yaml.Node) -> Any:
        if type(node) is yaml.ScalarNode:  # (exact type, inlined str: runs for every node)
            return node.value if node.tag == STR else self.scalar(node)
        done = self.memo.get(id(node))
        if done is not None:
            if id(node) in self.open:
                raise Refused(node, "an alias refers to a collection that contains it")
            self.plain = False
            return done
        if node.tag not in (MAP, SEQ):
            self.plain = False  # `!!set`, `!!omap`, custom tags: kubectl ignores them
        self.open.add(id(node))
        if isinstance(node, yaml.MappingNode):
            mapping: dict[str, Any] = {}
            self.memo[id(node)] = mapping
            self._fill(node, mapping)
            value: object = mapping
        else:
            sequence: list[Any] = []
            self.memo[id(node)] = sequence
            sequence.extend([self.build(item) for item in node.value])
            value = sequence
        self.open.discard(id(node))
        return value

    def scalar(self, node: yaml.Node) -> Scalar:
        tag = node.tag
        if tag == STR:
            return str(node.value)
        text: str = node.value
        resolved, value = resolve(text)
        if tag != resolved:
            return self._tagged(node, tag, resolved, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused(node, f"{text} is not a number JSON can carry, and kubectl refuses it")
        return value

    def _tagged(self, node: yaml.Node, tag: str, resolved: str, value: Scalar) -> Scalar:
        """An explicit tag: go-yaml converts what fits, refuses what does not."""
        text: str = node.value
        self.plain = False
        if tag == FLOAT and resolved == INT:
            return value
        if tag == _BINARY:
            try:
                return base64.b64decode(re.sub(r"[\r\n]", "", text), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise Refused(node, "!!binary that is not base64 of UTF-8 text") from None
        if tag == _TIMESTAMP and resolved == STR and re.match(r"[0-9]{4}-", text):
            return text  # a date: kubectl sends the text
        if tag in (BOOL, INT, FLOAT, NULL, _TIMESTAMP):
            short = "!!" + tag.rsplit(":", 1)[1]
            raise Refused(node, f"kubectl cannot read {text!r} as {short}")
        return text  # any other tag (`!foo`, `!!set`): kubectl keeps the text

    def _fill(self, node: yaml.MappingNode, mapping: dict[str, Any]) -> None:
        """go-yaml v2 order: entries in document order, a `<<` merge overwriting what came
        before it (among merged mappings, the first wins)."""
        typed: dict[str, object] = {}  # JSON key -> the non-string YAML key it came from
        for key_node, value_node in node.value:
            if key_node.tag == STR and type(key_node) is yaml.ScalarNode:
                key: str = key_node.value
                if key in typed:
                    raise _collision(key_node, key)
            elif key_node.tag == MERGE and key_node.value == "<<":
                self._merge(node, key_node, value_node, mapping)
                continue
            else:
                key, origin = self.key(key_node)
                if key in mapping and typed.get(key, key) != origin:
                    raise _collision(key_node, key)
                typed[key] = origin
            mapping[key] = self.build(value_node)

    def _merge(
        self,
        node: yaml.MappingNode,
        merge_key: yaml.Node,
        merged_node: yaml.Node,
        mapping: dict[str, Any],
    ) -> None:
        self.plain = False
        before = {}  # the keys written before this `<<`, which it would overwrite
        for key_node, _ in node.value:
            if key_node is merge_key:
                break
            if key_node.tag != MERGE:
                before[self.key(key_node)[0]] = key_node
        for merged in reversed(self._merged(merged_node)):
            for key, value in merged.items():
                if key in before:
                    line = merge_key.start_mark.line + 1
                    raise Refused(
                        before[key],
                        f"set here and by the `<<` merge at line {line}, which kubectl lets "
                        "win while kustomize and other YAML readers keep this line: set it once",
                    )
                mapping[key] = value

    def _merged(self, node: yaml.Node) -> list[dict[str, Any]]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged = []
        for item in items:
            if not isinstance(item, yaml.MappingNode):
                raise Refused(node, "`<<` needs a mapping or a list of mappings")
            merged.append(self.build(item))
        return merged

    def key(self, node: yaml.Node) -> tuple[str, object]:
        """The JSON key (sigs.k8s.io/yaml converts bool, int and float keys to strings) and
        the typed YAML key it came from (the key itself when it was a string)."""
        if not isinstance(node, yaml.ScalarNode):
            raise Refused(node, "a list or mapping as a mapping key, which kubectl refuses")
        text: str = node.value
        if node.tag == STR:
            return text, text
        resolved, value = resolve(text)
        if node.tag != resolved:
            value = self.scalar(node)  # an explicit tag
        elif resolved == FLOAT and isinstance(value, int):
            value = float(text.replace("_", ""))  # a key stays a float: `1e10:` is "1e+10"
        elif resolved == INT and isinstance(value, float):
            raise Refused(node, f"the key {text} is beyond 64 bits, which kubectl refuses")
        if value is None:
            raise Refused(node, "a null mapping key, which kubectl refuses")
        if isinstance(value, bool):
            return ("true" if value else "false"), (BOOL, value)
        if isinstance(value, int):
            return str(value), (INT, value)
        if isinstance(value, float):
            return go_float32(value), (FLOAT, value)
        return value, value


def _collision(node: yaml.Node, key: str) -> Refused:
    return Refused(node, f"two keys both become {key!r} in JSON and kubectl keeps either at random")


def go_float32(number: float) -> str:
    """strconv.FormatFloat(number, 'g', -1, 32), which sigs.k8s.io/yaml writes float keys with:
    the shortest digits that identify the float32, exponent form outside 1e-4 <= |x| < 1e6."""
    if math.isnan(number):
        return ".nan"
    try:
        single = struct.unpack("f", struct.pack("f", number))[0]
    except OverflowError:  # beyond float32: Go rounds it to infinity
        single = math.copysign(math.inf, number)
    if math.isinf(single):
        return ".inf" if single > 0 else "-.inf"
    if single == 0:
        return "-0" if math.copysign(1, single) < 0 else "0"
    for precision in range(1, 10):
        written = f"{single:.{precision - 1}e}"
        if struct.unpack("f", struct.pack("f", float(written)))[0] == single:
            break
    mantissa, exponent_text = written.split("e")
    exponent = int(exponent_text)
    sign = "-" if mantissa.startswith("-") else ""
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    if exponent < -4 or exponent >= 6:
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{body}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    if exponent < 0:
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    whole = digits[: exponent + 1].ljust(exponent + 1, "0")
    fraction = digits[exponent + 1 :]
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"
