"""The mypyc build of the admission path: what `make` compiles is what the tests import, and a
build older than its source is refused rather than run."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import re
from pathlib import Path

import pytest

from webhook import StaleBuildError, check_compiled

ROOT = Path(__file__).resolve().parents[2]
SO = importlib.machinery.EXTENSION_SUFFIXES[0].lstrip(".")  # cpython-311-x86_64-linux-gnu.so


def _touch(path: Path, mtime: float) -> None:
    path.write_text("")
    os.utime(path, (mtime, mtime))


def test_a_build_older_than_its_source_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path / f"review.{SO}", 1_000)
    _touch(tmp_path / "review.py", 2_000)
    with pytest.raises(StaleBuildError, match=r"review\.py changed after it was compiled"):
        check_compiled(str(tmp_path))


def test_a_fresh_build_and_modules_without_source_pass(tmp_path: Path) -> None:
    _touch(tmp_path / "review.py", 1_000)
    _touch(tmp_path / f"review.{SO}", 2_000)
    _touch(tmp_path / f"_compiled__mypyc.{SO}", 500)  # mypyc's shared library has no source
    _touch(tmp_path / "policy.py", 3_000)  # not compiled at all
    check_compiled(str(tmp_path))


def _compiled_by_make() -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^COMPILED := (.+)$", makefile, re.MULTILINE)
    assert match, "the Makefile names no COMPILED modules"
    return [path.removesuffix(".py").replace("/", ".") for path in match.group(1).split()]


def test_the_modules_make_compiles_are_the_ones_imported() -> None:
    # `make unit` sets PODLOCK_COMPILED after `make compile`: there every module must be built.
    # A bare pytest may run the plain source, but never a build of only some modules.
    built = {
        name: (importlib.import_module(name).__file__ or "").endswith(".so")
        for name in _compiled_by_make()
    }
    if os.environ.get("PODLOCK_COMPILED") == "1":
        assert all(built.values()), built
    else:
        assert len(set(built.values())) == 1, built
