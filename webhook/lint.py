"""`podlock lint`: manifests in, findings out, with the admission webhook's own policy.

files -> documents (manifests) -> pod specs (podspecs) -> violations (policy) -> report.
`--fix` writes the hardening plan (hardening, the same plan the mutating webhook patches
with) into the files' text (fixer); `--diff` shows that change and writes nothing.

Exit codes (an error outranks findings):
    0  no findings
    1  findings (after --fix: findings the fix could not remove)
    2  usage, policy-file or input errors: an unreadable or unparsable file (the other files
       are still linted and reported), or a fix that could not be written safely
Output: the report goes to stdout, except that with --diff stdout carries the unified diff,
and with --fix on stdin (`-`) it carries the fixed stream; the report then goes to stderr.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO, TextIO

import yaml

from webhook import manifests, policy
from webhook.config import ConfigError, Settings, load_settings
from webhook.fixer import CannotFix, Style, apply_edits, plan_edits
from webhook.hardening import Add, apply, plan
from webhook.manifests import STDIN, Document, ParseError, Source
from webhook.podspecs import pod_specs
from webhook.reports import Finding, Format, Report, render

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
ROFS = "readOnlyRootFilesystem"


# --- the pure part: one parsed source at a time -------------------------------------------


def lint_source(source: Source, settings: Settings) -> tuple[list[Finding], int]:
    """Findings for every pod spec in the source, and how many pod specs were judged."""
    findings: list[Finding] = []
    judged = 0
    for document in source.documents:
        for ref in pod_specs(document.value):
            if ref.namespace and policy.exemption(ref, ref.namespace, settings):
                continue  # admission would never judge it either
            judged += 1
            for violation in policy.evaluate(ref.spec, settings, "lint"):
                line = manifests.line_of(document.node, (*ref.path, *violation.path))
                findings.append(
                    Finding(
                        file=source.name,
                        line=line,
                        kind=ref.kind,
                        namespace=ref.namespace,
                        name=ref.name,
                        container=violation.container,
                        rule=violation.rule,
                        message=violation.message,
                    )
                )
    findings.sort(key=lambda f: f.line)  # stable: documents and containers keep their order
    return findings, judged


@dataclass(frozen=True, slots=True)
class Fixed:
    text: str  # the new text (the old one when nothing changed)
    containers: int  # containers hardened


def fix_source(source: Source, settings: Settings) -> Fixed:
    """The source's text with the hardening written in; raises CannotFix when unsafe.

    The new text is parsed again and must give exactly `hardening.apply(original, ops)` for
    every document: a text edit that means anything else is never written.
    """
    style = Style.of(source.text, [d.node for d in source.documents])
    edits = []
    expected: list[object] = []
    containers = 0
    for order, document in enumerate(source.documents):
        value = document.value
        for ref in pod_specs(document.value):
            if ref.namespace and policy.exemption(ref, ref.namespace, settings):
                continue
            ops = plan(ref, settings)
            if not ops:
                continue
            _refuse_aliases(document)
            edits.extend(plan_edits(source.text, document.node, ref.path, ops, style, order))
            value = apply(value, ops, ref.path)
            containers += sum(1 for op in ops if _hardens(op))
        expected.append(value)
    if not edits:
        return Fixed(source.text, 0)
    text = apply_edits(source.text, edits)
    try:
        again = [d.value for d in manifests.parse_text(text)]
    except yaml.YAMLError as e:
        raise CannotFix(f"the fixed text does not parse ({e.__class__.__name__})") from None
    if again != expected:
        raise CannotFix("the fixed text does not read back as the hardened manifest")
    return Fixed(text, containers)


def _hardens(op: Add) -> bool:
    """The op that makes one container read-only (each container gets exactly one)."""
    last = op.path[-1]
    if last == "readOnlyRootFilesystem":
        return True
    return last == "securityContext" and isinstance(op.value, dict) and ROFS in op.value


def _refuse_aliases(document: Document) -> None:
    """A node reached twice is an alias: editing its text would change every place using it."""
    seen: set[int] = set()
    stack: list[yaml.Node] = [document.node]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise CannotFix("the document uses YAML aliases; fix it by hand")
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def unified_diff(name: str, before: str, after: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"a/{name}",
        tofile=f"b/{name}",
    )
    out = []
    for line in lines:
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return "".join(out)


# --- the edge: arguments, files, streams ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    paths: tuple[str, ...]
    format: Format = "text"
    fix: bool = False
    diff: bool = False
    config: str | None = None


def run(args: argparse.Namespace) -> int:
    options = Options(
        paths=tuple(args.paths),
        format=args.format,
        fix=bool(args.fix),
        diff=bool(args.diff),
        config=args.config,
    )
    return main(options, sys.stdin.buffer, sys.stdout, sys.stderr)


def main(options: Options, stdin: BinaryIO, stdout: TextIO, stderr: TextIO) -> int:
    try:
        settings = load_settings(options.config)
    except ConfigError as e:
        print(f"podlock lint: {e}", file=stderr)
        return EXIT_ERROR
    if options.paths.count(STDIN) > 1:
        print("podlock lint: - (stdin) may be given only once", file=stderr)
        return EXIT_ERROR
    names, errors = manifests.discover(options.paths)
    stdin_bytes = stdin.read() if STDIN in names else None

    findings: list[Finding] = []
    judged = fixed_containers = fixed_files = 0
    diffs: list[str] = []
    fixed_stdin: str | None = None
    writing = options.fix and not options.diff
    for name in names:
        source = manifests.read(name, stdin_bytes if name == STDIN else None)
        if isinstance(source, ParseError):
            errors.append(source)
            continue
        if options.fix or options.diff:
            try:
                fixed = fix_source(source, settings)
            except CannotFix as e:
                errors.append(ParseError(source.name, None, f"not fixed: {e}"))
                fixed = Fixed(source.text, 0)
            if fixed.text != source.text:
                fixed_containers += fixed.containers
                fixed_files += 1
                if options.diff:
                    diffs.append(unified_diff(source.name, source.text, fixed.text))
                elif source.path is not None:
                    error = _write(source, fixed.text)
                    if error:
                        errors.append(error)
                        fixed = Fixed(source.text, 0)
                reparsed = manifests.parse(source.name, source.path, _encode(source, fixed.text))
                if isinstance(reparsed, Source):
                    source = reparsed
            if source.path is None and writing:
                fixed_stdin = fixed.text
        found, count = lint_source(source, settings)
        findings.extend(found)
        judged += count

    report = Report(
        findings=tuple(findings),
        errors=tuple(errors),
        files=len(names),
        pod_specs=judged,
        fixed_containers=fixed_containers,
        fixed_files=fixed_files,
        fixing=("would fix" if options.diff else "fixed") if (options.fix or options.diff) else "",
    )
    rendered = render(report, options.format, _version() if options.format == "sarif" else "0")
    if options.diff:
        stdout.write("".join(diffs))
        stderr.write(rendered)
    elif fixed_stdin is not None:
        stdout.write(fixed_stdin)
        stderr.write(rendered)
    else:
        stdout.write(rendered)
    stdout.flush()
    if errors:
        return EXIT_ERROR
    # --diff wrote nothing: the files on disk still need the fix.
    return EXIT_FINDINGS if findings or diffs else EXIT_CLEAN


def _encode(source: Source, text: str) -> bytes:
    return (b"\xef\xbb\xbf" if source.bom else b"") + text.encode("utf-8")


def _write(source: Source, text: str) -> ParseError | None:
    """Replace the file atomically, keeping its permission bits."""
    assert source.path is not None
    path = source.path
    temporary = f"{path}.podlock-fix.tmp"
    try:
        mode = os.stat(path).st_mode & 0o7777
        with open(temporary, "wb") as handle:
            handle.write(_encode(source, text))
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as e:
        if os.path.exists(temporary):
            os.unlink(temporary)
        return ParseError(source.name, None, f"not fixed: cannot write the file: {e.strerror or e}")
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("podlock")
    except PackageNotFoundError:
        return "0"


def lint_paths(paths: Iterable[str], settings: Settings) -> Report:
    """Lint files (no stdin, no fixing): the library entry point used by tests and benchmarks."""
    names, errors = manifests.discover(list(paths))
    findings: list[Finding] = []
    judged = 0
    for name in names:
        source = manifests.read(name)
        if isinstance(source, ParseError):
            errors.append(source)
            continue
        found, count = lint_source(source, settings)
        findings.extend(found)
        judged += count
    return Report(tuple(findings), tuple(errors), len(names), judged)
