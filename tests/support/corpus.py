"""Where the manifest corpus lives: `tests/corpus`, kept in the repository.

Each file is a copy of a public project's manifest; `tests/corpus/SOURCES.md` names its
repository, commit and licence.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"


def corpus_dir() -> Path:
    """`tests/corpus`; a missing corpus fails loudly, never lets its tests pass on nothing."""
    if not (CORPUS / "SOURCES.md").is_file():
        raise AssertionError(f"the manifest corpus is missing: expected {CORPUS}/SOURCES.md")
    return CORPUS
