"""`podlock lint`: manifests in, findings out, with the admission webhook's own policy.

files -> documents (manifests, as kubectl reads them: kubeyaml) -> pod specs (podspecs; of
other kinds: shapes) -> violations (policy) -> report.
`--fix` writes the hardening plan (hardening, the same plan the mutating webhook patches
with) into the files' text (fixer); `--diff` shows that change and writes nothing.

Exit codes describe the files as they are on disk when the command ends; an error outranks
findings:
    0  no findings
    1  findings (after --fix: what the fix could not remove; with --diff: findings, or a fix
       still to apply)
    2  usage, policy-file or input errors: an unreadable or unparsable file, a value kubectl
       refuses or YAML readers disagree on, a workload without apiVersion, a fix that could
       not be written safely (all other files are still linted and reported)
Containers reported as not judged (shapes) leave the exit code as it is.
Streams: the report goes to stdout, except that with --diff stdout carries the unified diff
and with --fix on stdin (`-`) the fixed stream; the report then goes to stderr. Stdin is
reported as `<stdin>` (`stdin` in SARIF).
Objects whose metadata.namespace is exempt in the policy are not judged (as at admission).
Objects of kinds podlock does not know are judged by their pod templates, and containers
outside a template are reported as not judged (shapes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Literal, TextIO

import yaml

from webhook import manifests, policy, shapes
from webhook.config import IMAGE_RULE, ConfigError, Settings, load_settings
from webhook.manifests import STDIN, Document, ParseError, Source
from webhook.podspecs import POD_SPEC_PATHS, Path, PodSpecRef, pod_specs
from webhook.reports import Finding, Format, Report, Skipped, render

if TYPE_CHECKING:
    from webhook.hardening import Add

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


# --- the pure part: one parsed source at a time -------------------------------------------


@dataclass(frozen=True, slots=True)
class Linted:
    findings: list[Finding]
    errors: list[ParseError]  # objects that are not valid Kubernetes objects
    judged: int  # pod specs judged
    skipped: list[Skipped]  # containers found but not judged


def judged_refs(
    source: Source,
    settings: Settings,
    errors: list[ParseError] | None = None,
    skipped: list[Skipped] | None = None,
) -> Iterator[tuple[int, Document, PodSpecRef]]:
    """The pod specs that admission would judge, with their document and its index; and the
    pod templates of objects of unknown kinds (shapes), which their controllers' Pods get.

    Skipped: objects in an exempt namespace (admission never sees them) and workload-kind
    objects without an apiVersion (kubectl refuses them; reported into `errors`). Containers
    outside a pod template in objects of unknown kinds are reported into `skipped`.
    """
    for index, document in enumerate(source.documents):
        found = shapes.by_shape(document.value)
        if skipped is not None:
            skipped.extend(
                _skipped(source, document, unjudged)
                for unjudged in found.unjudged
                if unjudged.namespace not in settings.exempt_namespaces
            )
        known = [
            (ref.path[: len(ref.path) - len(POD_SPEC_PATHS[ref.kind])], ref)
            for ref in pod_specs(document.value)
        ]
        for object_path, ref in [*known, *found.judged]:
            api_version = _get(document.value, (*object_path, "apiVersion"))
            if not isinstance(api_version, str) or not api_version:
                if errors is not None:
                    line = manifests.line_of(document.node, object_path)
                    errors.append(
                        ParseError(
                            source.name,
                            line,
                            f'{ref.kind} "{ref.name or "<unnamed>"}" has no apiVersion: '
                            "not a Kubernetes object, not linted",
                        )
                    )
                continue
            if ref.namespace and policy.exemption(ref, ref.namespace, settings):
                continue
            yield index, document, ref


def _skipped(source: Source, document: Document, unjudged: shapes.Unjudged) -> Skipped:
    path = (*unjudged.object_path, *unjudged.path)
    what = "containers" if unjudged.path[-1] == "containers" else "an image"
    return Skipped(
        file=source.name,
        line=manifests.line_of(document.node, path),
        kind=unjudged.kind,
        namespace=unjudged.namespace,
        name=unjudged.name,
        path=manifests.field_name(unjudged.path),
        message=f"{what} outside a pod template, which podlock does not judge",
    )


def _get(value: object, path: Path) -> object:
    for step in path:
        if isinstance(value, dict) and isinstance(step, str):
            value = value.get(step)
        elif isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            value = value[step]
        else:
            return None
    return value


def lint_source(source: Source, settings: Settings) -> Linted:
    """Findings for every judged pod spec in the source (pure: no I/O)."""
    findings: list[Finding] = []
    errors: list[ParseError] = []
    skipped: list[Skipped] = []
    judged = 0
    for _, document, ref in judged_refs(source, settings, errors, skipped):
        judged += 1
        for violation in policy.evaluate(ref.spec, settings, "lint", None, ref.annotations):
            findings.append(
                Finding(
                    file=source.name,
                    line=manifests.line_of(document.node, (*ref.path, *violation.path)),
                    kind=ref.kind,
                    namespace=ref.namespace,
                    name=ref.name,
                    container=violation.container,
                    rule=violation.rule,
                    message=violation.message,
                )
            )
    findings.sort(key=lambda f: f.line)  # stable: documents and containers keep their order
    return Linted(findings, errors, judged, skipped)


@dataclass(frozen=True, slots=True)
class Fixed:
    text: str  # the new text (the old one when nothing changed)
    containers: int  # containers hardened


def fix_source(source: Source, settings: Settings) -> Fixed:
    """The source's text with the hardening written in; raises CannotFix when unsafe.

    The new text is parsed again and must give exactly `hardening.apply(original, ops)` for
    every document: a text edit that means anything else is never written.
    """
    # Imported here: plain linting needs neither the fixer nor the hardening plan.
    from webhook.fixer import CannotFix, Style, apply_edits, plan_edits
    from webhook.hardening import apply, plan

    style = Style.of(source.text, [d.node for d in source.documents])
    edits = []
    containers = 0
    expected = [document.value for document in source.documents]
    for order, document, ref in judged_refs(source, settings):
        ops = plan(ref, settings)
        if not ops:
            continue
        if not document.plain:
            # An alias's text serves several places, and `<<` merges hide where a field is.
            raise CannotFix("the document uses YAML aliases, merge keys or tags; fix it by hand")
        edits.extend(plan_edits(source.text, document.node, ref.path, ops, style, order))
        expected[order] = apply(expected[order], ops, ref.path)
        containers += len({op.path[:2] for op in ops if _hardens(op)})
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
    """An op on a container's securityContext (a container may get several)."""
    return len(op.path) > 2 and op.path[2] == "securityContext"


def unified_diff(name: str, before: str, after: str) -> str:
    import difflib

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


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """Everything one input contributes to the report."""

    findings: tuple[Finding, ...] = ()
    errors: tuple[ParseError, ...] = ()
    judged: int = 0
    skipped: tuple[Skipped, ...] = ()
    fixed_containers: int = 0  # hardened (or, with --diff, that would be)
    diff: str = ""
    text: str | None = None  # stdin's text after --fix


def process(name: str, settings: Settings, mode: Mode, stdin: bytes | None = None) -> FileOutcome:
    """Read, (fix,) and lint one input: files are written here, stdin's text is returned."""
    source = manifests.read(name, stdin)
    if isinstance(source, ParseError):
        return FileOutcome(errors=(source,))
    errors: list[ParseError] = []
    fixed_containers, diff, text = 0, "", None
    if mode != "lint":
        from webhook.fixer import CannotFix

        try:
            fixed = fix_source(source, settings)
        except CannotFix as e:
            errors.append(ParseError(source.name, None, f"not fixed: {e}"))
            fixed = Fixed(source.text, 0)
        if fixed.text != source.text:
            if mode == "diff":
                diff = unified_diff(source.name, source.text, fixed.text)
            elif source.path is not None:
                error = _write(source, fixed.text)
                if error:
                    errors.append(error)
                    fixed = Fixed(source.text, 0)
            fixed_containers = fixed.containers
            # Report what is left after the fix, at the fixed text's lines.
            reparsed = manifests.parse(source.name, source.path, _encode(source, fixed.text))
            if isinstance(reparsed, Source):
                source = reparsed
        if source.path is None and mode == "fix":
            text = fixed.text
    linted = lint_source(source, settings)
    return FileOutcome(
        findings=tuple(linted.findings),
        errors=(*errors, *linted.errors),
        judged=linted.judged,
        skipped=tuple(linted.skipped),
        fixed_containers=fixed_containers,
        diff=diff,
        text=text,
    )


Mode = Literal["lint", "fix", "diff"]
FIXING: dict[Mode, Literal["", "fixed", "would fix"]] = {
    "lint": "",
    "fix": "fixed",
    "diff": "would fix",
}


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
    mode: Mode = "diff" if options.diff else "fix" if options.fix else "lint"

    # One process, in order: forked workers were measured (2 CPUs, the whole corpus) no
    # faster in wall time and dearer in CPU.
    outcomes = [
        process(name, settings, mode, stdin.read() if name == STDIN else None) for name in names
    ]

    findings = [f for o in outcomes for f in o.findings]
    errors.extend(e for o in outcomes for e in o.errors)
    diffs = [o.diff for o in outcomes if o.diff]
    report = Report(
        findings=tuple(findings),
        errors=tuple(errors),
        files=len(names),
        pod_specs=sum(o.judged for o in outcomes),
        fixed_containers=sum(o.fixed_containers for o in outcomes),
        fixed_files=sum(1 for o in outcomes if o.fixed_containers),
        fixing=FIXING[mode],
        skipped=tuple(s for o in outcomes for s in o.skipped),
    )
    rendered = render(report, options.format, _version() if options.format == "sarif" else "0")
    fixed_stdin = next((o.text for o in outcomes if o.text is not None), None)
    if mode == "diff":
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
    # A rule whose action is warn (mutable-image-reference) reports without failing the run.
    warn_only = {IMAGE_RULE} if settings.image_action == "warn" else set()
    blocking = any(f.rule not in warn_only for f in findings)
    return EXIT_FINDINGS if blocking or diffs else EXIT_CLEAN


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
    """Lint files (no stdin, no fixing): the library entry point for tests and benchmarks."""
    names, errors = manifests.discover(list(paths))
    outcomes = [process(name, settings, "lint") for name in names]
    return Report(
        findings=tuple(f for o in outcomes for f in o.findings),
        errors=(*errors, *(e for o in outcomes for e in o.errors)),
        files=len(names),
        pod_specs=sum(o.judged for o in outcomes),
        skipped=tuple(s for o in outcomes for s in o.skipped),
    )
