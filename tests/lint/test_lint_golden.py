"""Golden outputs of `podlock lint` on examples/: text, JSON, SARIF and the --diff of --fix.

Regenerate after an intended change with `PODLOCK_UPDATE_GOLDEN=1 pytest tests/lint` and
review the diff of tests/lint/golden/.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

import pytest
from lint_support import GOLDEN, ROOT, run

# Named one by one: other parts keep their own files in examples/ too.
EXAMPLES = (
    "examples/backup-cronjob.yaml",
    "examples/list.yaml",
    "examples/multi-doc.yaml",
    "examples/nginx-deployment.yaml",
    "examples/pod.json",
    "examples/privileged-daemonset.yaml",
)

CASES = [
    ("text", "examples.txt", {}),
    ("json", "examples.json", {}),
    ("sarif", "examples.sarif", {}),
    ("text", "examples.diff", {"diff": True}),
]


def normalize(text: str) -> str:
    """The checkout's location and the package version are not part of the output's shape."""
    text = text.replace(Path(ROOT).as_uri() + "/", "file:///REPO/")
    return text.replace(f'"version": "{version("podlock")}"', '"version": "VERSION"')


@pytest.mark.parametrize(("fmt", "golden", "flags"), CASES, ids=[c[1] for c in CASES])
def test_golden(
    fmt: str, golden: str, flags: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    before = {name: (ROOT / name).read_bytes() for name in EXAMPLES}
    result = run(*EXAMPLES, fmt=fmt, **flags)
    assert result.code == 1
    output = normalize(result.stdout)
    path = GOLDEN / golden
    if os.environ.get("PODLOCK_UPDATE_GOLDEN"):
        path.write_text(output)
    assert output == path.read_text()
    assert {
        name: (ROOT / name).read_bytes() for name in EXAMPLES
    } == before  # --diff writes nothing
