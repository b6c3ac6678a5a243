"""What `podlock lint` found, and its three renderings: text, JSON and SARIF 2.1.0."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import PurePath
from typing import Any, Literal

import orjson

from webhook.manifests import STDIN_NAME, ParseError
from webhook.policy import RULES

Format = Literal["text", "json", "sarif"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://podlock.io"
# GitHub code scanning ranks security alerts by this score (0.1-10; >= 9 is critical).
SECURITY_SEVERITY: Mapping[str, str] = {
    "privileged-container": "9.0",
    "root-user": "7.5",
    "writable-root-filesystem": "5.5",
    "writable-mount": "7.0",
    "run-as-non-root": "6.5",
    "privilege-escalation": "6.5",
    "capabilities": "8.0",
    "security-profile": "7.0",
    "host-access": "9.0",
    "mutable-image-reference": "3.0",
}


@dataclass(frozen=True, slots=True)
class Finding:
    file: str
    line: int
    kind: str
    namespace: str  # "" when the manifest sets none
    name: str
    container: str
    rule: str
    message: str

    @property
    def subject(self) -> str:
        """`Deployment/web/nginx`, or `Deployment/nginx` when no namespace is set."""
        name = self.name or "<unnamed>"
        return f"{self.kind}/{self.namespace}/{name}" if self.namespace else f"{self.kind}/{name}"


@dataclass(frozen=True, slots=True)
class Skipped:
    """Containers found in an object of an unknown kind outside a pod template (shapes.py):
    not judged, and said so."""

    file: str
    line: int
    kind: str
    namespace: str  # "" when the manifest sets none
    name: str
    path: str  # where in the object: `spec.containers`
    message: str

    @property
    def subject(self) -> str:
        name = self.name or "<unnamed>"
        return f"{self.kind}/{self.namespace}/{name}" if self.namespace else f"{self.kind}/{name}"


@dataclass(frozen=True, slots=True)
class Report:
    findings: tuple[Finding, ...]
    errors: tuple[ParseError, ...]
    files: int  # inputs read (parsed or not)
    pod_specs: int  # pod specs judged
    fixed_containers: int = 0  # containers hardened by --fix / --diff
    fixed_files: int = 0
    fixing: Literal["", "fixed", "would fix"] = ""
    skipped: tuple[Skipped, ...] = ()


def render(report: Report, fmt: Format, version: str = "0") -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "sarif":
        return render_sarif(report, version)
    return render_text(report)


def render_text(report: Report) -> str:
    lines = [
        f"{f.file}:{f.line}: {f.subject} {f.container or '(pod)'} {f.rule}: {f.message}"
        for f in report.findings
    ]
    lines += [
        f"{s.file}:{s.line}: not judged: {s.subject} {s.path}: {s.message}" for s in report.skipped
    ]
    lines += [f"{e.file}:{e.line or 0}: error: {e.message}" for e in report.errors]
    if report.fixing:
        lines.append(
            f"{report.fixing} {_count(report.fixed_containers, 'container')} in "
            f"{_count(report.fixed_files, 'file')}"
        )
    lines.append(summary(report))
    return "\n".join(lines) + "\n"


def _where(finding: Finding) -> str:
    return f"container {finding.container}" if finding.container else "pod"


def summary(report: Report) -> str:
    by_rule = Counter(f.rule for f in report.findings)
    found = _count(len(report.findings), "finding")
    if by_rule:
        found += " (" + ", ".join(f"{rule}: {n}" for rule, n in sorted(by_rule.items())) + ")"
    if report.skipped:
        found += f", {len(report.skipped)} not judged"
    errors = f", {_count(len(report.errors), 'error')}" if report.errors else ""
    scanned = f"{_count(report.files, 'file')}, {_count(report.pod_specs, 'pod spec')}"
    return f"{found}{errors} in {scanned}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


_FINDING_FIELDS = tuple(field.name for field in fields(Finding))


def render_json(report: Report) -> str:
    document = {
        # Not asdict(): it deep-copies every value, and the strict profile's thousands of
        # findings over a repository made that a fifth of a lint run.
        "findings": [{name: getattr(f, name) for name in _FINDING_FIELDS} for f in report.findings],
        "errors": [asdict(e) for e in report.errors],
        "skipped": [asdict(s) for s in report.skipped],
    }
    # orjson writes the same text as json.dumps(indent=2) ten times faster, except that it
    # leaves non-ASCII and DEL unescaped: those rare reports take the slow path.
    raw = orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    if raw.isascii() and b"\x7f" not in raw:
        return raw.decode()
    return json.dumps(document, indent=2) + "\n"


# --- SARIF ------------------------------------------------------------------------------


def render_sarif(report: Report, version: str, cwd: str | None = None) -> str:
    return json.dumps(sarif(report, version, cwd), indent=2) + "\n"


def sarif(report: Report, version: str, cwd: str | None = None) -> dict[str, Any]:
    """A SARIF 2.1.0 log as GitHub code scanning accepts it (one run, one result a finding)."""
    base = cwd if cwd is not None else os.getcwd()
    rule_ids = list(RULES)
    rules = [_sarif_rule(rule_id) for rule_id in rule_ids]
    results = [_sarif_result(f, rule_ids.index(f.rule), base) for f in report.findings]
    notifications = [
        {
            "level": "error",
            "message": {"text": e.message},
            "locations": [_location(e.file, e.line, base)],
        }
        for e in report.errors
    ] + [
        {
            "level": "warning",
            "message": {"text": f"{s.subject} {s.path}: {s.message}"},
            "locations": [_location(s.file, s.line, base)],
        }
        for s in report.skipped
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "podlock",
                        "informationUri": INFORMATION_URI,
                        "version": version,
                        "rules": rules,
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": not report.errors,
                        "toolExecutionNotifications": notifications,
                    }
                ],
                "originalUriBaseIds": {"%SRCROOT%": {"uri": _file_uri(base, directory=True)}},
                "results": results,
            }
        ],
    }


def _sarif_rule(rule_id: str) -> dict[str, Any]:
    info = RULES[rule_id]
    return {
        "id": rule_id,
        "name": "".join(part.capitalize() for part in rule_id.split("-")),
        "shortDescription": {"text": info.title},
        "fullDescription": {"text": info.description},
        "help": {"text": info.help, "markdown": info.help},
        "defaultConfiguration": {"level": info.severity},
        "properties": {
            "tags": ["security", "kubernetes", "immutability"],
            "precision": "very-high",
            "problem.severity": info.severity,
            "security-severity": SECURITY_SEVERITY.get(rule_id, "5.0"),
        },
    }


def _sarif_result(f: Finding, rule_index: int, base: str) -> dict[str, Any]:
    import hashlib

    identity = "\0".join((f.kind, f.namespace, f.name, f.container, f.rule))
    return {
        "ruleId": f.rule,
        "ruleIndex": rule_index,
        "level": RULES[f.rule].severity,
        "message": {"text": f"{f.subject} {_where(f)}: {f.message}"},
        "locations": [_location(f.file, f.line, base)],
        # Stable across edits that move lines, so code scanning keeps one alert per container.
        "partialFingerprints": {
            "podlockFinding/v1": hashlib.sha256(identity.encode()).hexdigest()[:32]
        },
    }


def _location(file: str, line: int | None, base: str) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": _artifact(file, base)}
    if line:
        physical["region"] = {"startLine": line}
    return {"physicalLocation": physical}


def _artifact(file: str, base: str) -> dict[str, Any]:
    """URI relative to the working directory (GitHub resolves it against the checkout)."""
    if file == STDIN_NAME:
        return {"uri": "stdin"}
    absolute = os.path.abspath(os.path.join(base, file))
    relative = os.path.relpath(absolute, base)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return {"uri": _file_uri(absolute)}
    return {"uri": _quote(PurePath(relative).as_posix()), "uriBaseId": "%SRCROOT%"}


def _file_uri(path: str, directory: bool = False) -> str:
    uri = "file://" + _quote(PurePath(os.path.abspath(path)).as_posix())
    # SARIF wants a base URI to end with a slash.
    return uri + "/" if directory and not uri.endswith("/") else uri


def _quote(path: str) -> str:
    from urllib.parse import quote  # only SARIF needs it: kept off the plain lint path

    return quote(path)
