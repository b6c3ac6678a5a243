"""SARIF output against the official SARIF 2.1.0 JSON schema, plus what GitHub code scanning
needs beyond the schema.

sarif-schema-2.1.0.json is the OASIS SARIF 2.1.0 schema (2.1.0-rtm.5, the final one), as
shipped in the MIT-licensed npm package @microsoft/jest-sarif 1.0.0-beta.0
(lib/schemas/sarif-2.1.0-rtm.5.json), copied unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from lint_support import ROOT, run

from webhook.policy import RULES

SCHEMA = json.loads((Path(__file__).parent / "sarif-schema-2.1.0.json").read_text())
EXAMPLES = (
    "examples/privileged-daemonset.yaml",
    "examples/pod.json",
    "examples/multi-doc.yaml",
)


def sarif_of(*paths: str, stdin: bytes = b"") -> dict[str, Any]:
    result = run(*paths, fmt="sarif", stdin=stdin)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


CASES = [
    ("findings", EXAMPLES, b""),
    ("no findings", ("examples/pod.json",), b""),
    ("an error", ("examples/pod.json", "examples/missing.yaml"), b""),
    ("stdin with a parse error", ("-",), b"a: [\n"),
]


@pytest.mark.parametrize(("case", "paths", "stdin"), CASES, ids=[c[0] for c in CASES])
def test_valid_against_the_sarif_schema(
    case: str, paths: tuple[str, ...], stdin: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    jsonschema.Draft4Validator(SCHEMA).validate(sarif_of(*paths, stdin=stdin))


def test_what_github_code_scanning_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    log = sarif_of(*EXAMPLES)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (sarif_run,) = log["runs"]
    driver = sarif_run["tool"]["driver"]
    assert driver["name"] == "podlock" and driver["version"] and driver["informationUri"]
    assert [r["id"] for r in driver["rules"]] == list(RULES)
    for rule in driver["rules"]:
        assert rule["name"] and rule["shortDescription"]["text"]
        assert rule["fullDescription"]["text"] and rule["help"]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
        assert "security" in rule["properties"]["tags"]
        assert 0 < float(rule["properties"]["security-severity"]) <= 10
    assert len(sarif_run["results"]) == 17
    for result in sarif_run["results"]:
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] == RULES[result["ruleId"]].severity and result["message"]["text"]
        (location,) = result["locations"]
        artifact = location["physicalLocation"]["artifactLocation"]
        assert artifact["uri"] in EXAMPLES and artifact["uriBaseId"] == "%SRCROOT%"
        assert location["physicalLocation"]["region"]["startLine"] >= 1
        assert result["partialFingerprints"]
    assert sarif_run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == ROOT.as_uri() + "/"


def test_uris_are_relative_to_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "examples")
    log = sarif_of("pod.json", str(ROOT / "examples" / "list.yaml"), "../examples/pod.json")
    uris = [
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        for r in log["runs"][0]["results"]
    ]
    # the same file named twice is linted once
    assert list(dict.fromkeys(uris)) == ["pod.json", "list.yaml"]
    assert len(uris) == len(set(json.dumps(r) for r in log["runs"][0]["results"]))


def test_files_outside_the_working_directory_get_absolute_uris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = sarif_of(str(ROOT / "examples" / "pod.json"))
    artifact = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact == {"uri": (ROOT / "examples" / "pod.json").as_uri()}


def test_errors_are_tool_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    (invocation,) = sarif_of("examples/pod.json", "examples/missing.yaml")["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and note["message"]["text"] == "no such file or directory"
