"""`podlock lint` as a command: exit codes, streams, stdin, --fix/--diff on disk, --config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lint_support import run

CLEAN = """\
apiVersion: v1
kind: Pod
metadata:
  name: clean
spec:
  containers:
  - name: app
    image: busybox@sha256:abababababababababababababababababababababababababababababababab
    securityContext:
      runAsUser: 1000
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
"""
FIXABLE = """\
apiVersion: v1
kind: Pod
metadata:
  name: fixable
spec:
  containers:
  - name: app  # the app
    image: busybox@sha256:abababababababababababababababababababababababababababababababab
    securityContext:
      runAsUser: 1000
"""
PRIVILEGED = CLEAN.replace("runAsUser: 1000", "runAsUser: 1000\n      privileged: true")
BROKEN = "apiVersion: v1\nkind: Pod\nspec: [\n"


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, text in (
        ("clean.yaml", CLEAN),
        ("fixable.yaml", FIXABLE),
        ("privileged.yaml", PRIVILEGED),
        ("broken.yaml", BROKEN),
    ):
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


EXIT_CODES = [
    ("clean", ["clean.yaml"], 0),
    ("findings", ["clean.yaml", "fixable.yaml"], 1),
    ("a broken file outranks findings", ["broken.yaml", "fixable.yaml"], 2),
    ("a path that does not exist", ["clean.yaml", "missing.yaml"], 2),
    ("a directory", ["."], 2),
]


@pytest.mark.parametrize(("case", "paths", "code"), EXIT_CODES, ids=[c[0] for c in EXIT_CODES])
def test_exit_codes(files: Path, case: str, paths: list[str], code: int) -> None:
    assert run(*paths).code == code


def test_a_broken_file_is_named_and_the_others_are_still_linted(files: Path) -> None:
    result = run("broken.yaml", "fixable.yaml", fmt="json")
    report = json.loads(result.stdout)
    assert report["errors"] == [
        {
            "file": "broken.yaml",
            "line": 4,
            "message": "invalid YAML: did not find expected node content (while parsing a flow "
            "node at line 4)",
        }
    ]
    assert [(f["file"], f["line"], f["rule"]) for f in report["findings"]] == [
        ("fixable.yaml", 9, "writable-root-filesystem"),
        ("fixable.yaml", 9, "privilege-escalation"),
    ]


def test_text_report(files: Path) -> None:
    result = run("privileged.yaml", "fixable.yaml", "broken.yaml")
    assert result.stdout.splitlines() == [
        "privileged.yaml:11: Pod/clean app privileged-container: privileged is true",
        "fixable.yaml:9: Pod/fixable app writable-root-filesystem: "
        "readOnlyRootFilesystem is not set",
        "fixable.yaml:9: Pod/fixable app privilege-escalation: allowPrivilegeEscalation is not set",
        "broken.yaml:4: error: invalid YAML: did not find expected node content (while "
        "parsing a flow node at line 4)",
        "3 findings (privilege-escalation: 1, privileged-container: 1, "
        "writable-root-filesystem: 1), 1 error in 3 files, 2 pod specs",
    ]
    assert result.stderr == ""


def test_fix_rewrites_only_what_needs_it(files: Path) -> None:
    os.chmod("fixable.yaml", 0o640)
    clean_before = Path("clean.yaml").read_bytes()
    result = run("clean.yaml", "fixable.yaml", "privileged.yaml", fix=True)
    assert result.code == 1  # the privileged container cannot be fixed automatically
    assert "fixed 1 container in 1 file" in result.stdout
    assert Path("clean.yaml").read_bytes() == clean_before
    fixed = Path("fixable.yaml").read_text()
    assert fixed.startswith(FIXABLE) and "readOnlyRootFilesystem: true" in fixed
    assert os.stat("fixable.yaml").st_mode & 0o777 == 0o640
    assert not list(files.glob("*.tmp"))
    assert run("fixable.yaml").code == 0


def test_fix_that_leaves_nothing_exits_zero(files: Path) -> None:
    assert run("fixable.yaml", fix=True).code == 0


def test_diff_prints_the_change_and_writes_nothing(files: Path) -> None:
    result = run("fixable.yaml", "clean.yaml", diff=True)
    assert result.code == 1  # the files on disk still need the fix
    assert Path("fixable.yaml").read_text() == FIXABLE
    assert result.stdout.startswith("--- a/fixable.yaml\n+++ b/fixable.yaml\n@@ ")
    added = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    removed = [line for line in result.stdout.splitlines() if line.startswith("- ")]
    assert removed == [] and len(added) == 8  # read-only root, no escalation, the /tmp volume
    assert "would fix 1 container in 1 file" in result.stderr
    clean = run("clean.yaml", diff=True)
    assert (clean.code, clean.stdout) == (0, "")


def test_stdin(files: Path) -> None:
    result = run("-", stdin=FIXABLE.encode(), fmt="json")
    assert result.code == 1
    assert json.loads(result.stdout)["findings"][0]["file"] == "<stdin>"


def test_fix_on_stdin_prints_the_fixed_stream(files: Path) -> None:
    result = run("-", stdin=FIXABLE.encode(), fix=True)
    assert result.code == 0
    assert result.stdout.startswith(FIXABLE)
    assert "readOnlyRootFilesystem: true" in result.stdout
    assert "fixed 1 container in 1 file" in result.stderr


def test_stdin_only_once(files: Path) -> None:
    result = run("-", "-")
    assert result.code == 2 and "only once" in result.stderr


def test_a_bad_policy_file_is_one_sentence(files: Path) -> None:
    Path("policy.yaml").write_text("rules:\n  privileged-container: maybe\n")
    result = run("clean.yaml", config="policy.yaml")
    assert result.code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "policy.yaml" in result.stderr and "privileged-container" in result.stderr


def test_the_policy_file_switches_rules_off(files: Path) -> None:
    Path("policy.yaml").write_text("rules:\n  privileged-container: off\n")
    assert run("privileged.yaml", config="policy.yaml").code == 0


def test_byte_order_mark_and_crlf_survive_fix(files: Path) -> None:
    data = b"\xef\xbb\xbf" + FIXABLE.replace("\n", "\r\n").encode()
    Path("bom.yaml").write_bytes(data)
    assert run("bom.yaml", fix=True).code == 0
    fixed = Path("bom.yaml").read_bytes()
    assert fixed.startswith(data)
    assert b"\n" not in fixed.replace(b"\r\n", b"")


def test_the_console_script_end_to_end(files: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "lint", "--format", "sarif", "-"],
        input=FIXABLE,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    sarif = json.loads(done.stdout)
    results = sarif["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["writable-root-filesystem", "privilege-escalation"]
    assert results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "stdin"


def test_usage_errors_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "lint", "--format", "xml", "x.yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "invalid choice" in done.stderr


HEAVY = ("flask", "werkzeug", "gunicorn", "kubernetes", "jsonpatch", "cryptography", "urllib3")


def test_the_lint_path_imports_nothing_heavy() -> None:
    """Flask or the kubernetes client on the lint path would cost more than linting itself."""
    code = (
        "import sys, webhook.cli, webhook.lint, webhook.reports\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
