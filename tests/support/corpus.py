"""Where the shared manifest corpus lives."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def corpus_dir() -> Path:
    """`shared/corpus` beside the repository (CI copies shared/ next to its clone)."""
    corpus = (ROOT / ".." / "shared" / "corpus").resolve()
    if not (corpus / "SOURCES.md").is_file():
        raise AssertionError(
            f"the manifest corpus is missing: expected {corpus} (shared/corpus beside the "
            "repository checkout); the corpus tests cannot run without it"
        )
    return corpus
