"""Helpers shared by the lint tests: run the command in-process, find the corpus, check fixes."""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass
from pathlib import Path

from webhook import manifests
from webhook.config import Settings
from webhook.hardening import apply, plan
from webhook.lint import Options, judged_refs, main
from webhook.manifests import Source
from webhook.policy import WRITABLE_ROOT, evaluate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def run(*args: str, stdin: bytes = b"", fmt: str = "text", **flags: object) -> Result:
    """`podlock lint` in-process: the same `main` the console script reaches."""
    options = Options(
        paths=tuple(args),
        format=fmt,  # type: ignore[arg-type]
        fix=bool(flags.get("fix", False)),
        diff=bool(flags.get("diff", False)),
        config=flags.get("config"),  # type: ignore[arg-type]
    )
    out, err = io.StringIO(), io.StringIO()
    code = main(options, io.BytesIO(stdin), out, err)
    return Result(code, out.getvalue(), err.getvalue())


def parse(text: str, name: str = "t.yaml") -> Source:
    source = manifests.parse(name, None, text.encode())
    assert isinstance(source, Source), source
    return source


def expected_after_fix(source: Source, settings: Settings) -> list[object]:
    """What the fixed text must read back as: `hardening.apply` of the plan, per document."""
    values = [d.value for d in source.documents]
    for index, _, ref in judged_refs(source, settings):
        values[index] = apply(values[index], plan(ref, settings), ref.path)
    return values


def hardened_containers(source: Source, settings: Settings) -> set[tuple[int, str, str, int]]:
    """(document, pod spec path, container group, index) that the plan makes read-only."""
    found = set()
    for index, _, ref in judged_refs(source, settings):
        for op in plan(ref, settings):
            if op.path[-1] in ("securityContext", "readOnlyRootFilesystem"):
                found.add((index, str(ref.path), str(op.path[0]), int(op.path[1])))
    return found


def is_insertion(before: str, after: str) -> bool:
    """`after` is `before` with text inserted (nothing removed or rewritten)."""
    remaining = iter(after)
    return all(char in remaining for char in before)


def check_fix_invariants(
    before: str, after: str, settings: Settings, inserts_only: bool = True
) -> None:
    """Everything --fix promises, for one file's text before and after the fix."""
    original = parse(before)
    fixed = parse(after)
    # 1. the fixed text reads back as exactly the hardened manifest
    assert [d.value for d in fixed.documents] == expected_after_fix(original, settings)
    # 2. text is only added (so a diff shows only added lines, or lines that gained a flow
    #    entry); `key: null` filled in place is the one replacement
    if inserts_only:
        assert is_insertion(before, after), "".join(
            difflib.unified_diff(before.splitlines(True), after.splitlines(True))
        )
    # 3. idempotent: a second plan has nothing left to do
    for _, _, ref in judged_refs(fixed, settings):
        assert plan(ref, settings) == [], ref
    # 4. every container the plan hardened no longer has a writable-root-filesystem finding
    hardened = hardened_containers(original, settings)
    for index, _, ref in judged_refs(fixed, settings):
        for violation in evaluate(ref.spec, settings, "lint"):
            if violation.rule == WRITABLE_ROOT:
                group, position = str(violation.path[0]), int(violation.path[1])
                assert (index, str(ref.path), group, position) not in hardened, violation
