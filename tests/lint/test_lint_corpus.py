"""`podlock lint` over the real-world corpus (tests/corpus, 500+ manifests from public
projects): every file handled without a traceback, the deliberately broken kubesec fixtures
reported by name, and `--fix` on a copy of the whole corpus keeping all of its promises."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import corpus_dir
from lint_support import check_fix_invariants, run

from webhook.config import Settings
from webhook.lint import lint_paths
from webhook.policy import RULES

# Kubesec's malformed inputs (SOURCES.md): they parse as YAML but are not Kubernetes objects.
# `file=apiVersion: v1` swallows the apiVersion into a key; the JSON dump says `api_version`.
NOT_OBJECTS = {
    "controlplaneio__kubesec/test/asset/form-prefix-file.yml": (
        1,
        'Pod "nginx-apparmor" has no apiVersion: not a Kubernetes object, not linted',
    ),
    "controlplaneio__kubesec/test/asset/form-prefix-not-file.yml": (
        1,
        'Pod "nginx-apparmor" has no apiVersion: not a Kubernetes object, not linted',
    ),
    "controlplaneio__kubesec/test/asset/invalid-input-pod-dump.json": (
        1,
        'Pod "my-consumer-app-2176727022-58583" has no apiVersion: not a Kubernetes object, '
        "not linted",
    ),
}


def corpus_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.is_file()
    )


@pytest.fixture(scope="module")
def corpus() -> Path:
    return corpus_dir()


def test_every_file_is_linted_and_only_the_broken_fixtures_are_errors(
    corpus: Path, settings: Settings
) -> None:
    report = lint_paths([str(corpus)], settings)
    assert report.files == len(corpus_files(corpus)) > 450
    errors = {str(Path(e.file).relative_to(corpus)): (e.line, e.message) for e in report.errors}
    assert errors == NOT_OBJECTS
    # The corpus has 638 objects of the eight workload kinds (SOURCES.md) and 39 OpenShift
    # DeploymentConfigs, judged by their pod template (shapes); not judged: the 3 above and
    # the objects in exempt namespaces (kube-system). Nothing in it is left unjudged.
    assert 590 + 39 < report.pod_specs < 638 + 39
    assert report.skipped == ()
    assert report.findings
    for finding in report.findings:
        # A pod-level finding (host namespaces, hostPath, pod securityContext) names no container.
        pod_level = finding.rule in ("host-access", "security-profile")
        assert finding.line >= 1 and (finding.container or pod_level) and finding.rule


def test_the_command_over_the_corpus(corpus: Path, tmp_path: Path) -> None:
    """The console script end to end: JSON on stdout, exit 2 for the broken fixtures."""
    done = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "lint", "--format", "json", str(corpus)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == ""
    document = json.loads(done.stdout)
    assert len(document["errors"]) == len(NOT_OBJECTS)
    assert {f["rule"] for f in document["findings"]} == set(RULES)  # the corpus has them all


def test_fix_the_whole_corpus(corpus: Path, tmp_path: Path, settings: Settings) -> None:
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    os.chmod(copy, 0o755)  # a checkout may be read-only: make the copy writable
    for path in copy.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    files = corpus_files(copy)
    before = {p: p.read_bytes() for p in files}

    first = run(str(copy), fix=True)
    assert first.code == 2  # the three broken fixtures; everything else was fixed or clean
    assert "not fixed" not in first.stdout, first.stdout
    after = {p: p.read_bytes() for p in files}
    changed = [p for p in files if after[p] != before[p]]
    assert len(changed) > 400

    for path in changed:
        check_fix_invariants(before[path].decode(), after[path].decode(), settings)
    # Files with nothing to fix are byte-identical; a second run changes nothing at all.
    second = run(str(copy), fix=True, fmt="json")
    assert {p: p.read_bytes() for p in files} == after
    # What remains after fixing: privileged and root containers, and explicit false.
    remaining = {
        f["message"]
        for f in json.loads(second.stdout)["findings"]
        if f["rule"] == "writable-root-filesystem"
    }
    assert remaining == {"readOnlyRootFilesystem is false"}
