"""The two native parts of podlock's wheel; everything else is declared in pyproject.toml.

- The admission path compiled with mypyc: the modules the Makefile's COMPILED line names (one
  list, read here), built into the wheel without their .py sources, so an installed wheel has
  nothing for webhook/__init__.py's staleness guard to compare against. `make compile` builds
  the same extensions in place with `setup.py build_ext --inplace`.
- The CO-RE BPF object, built by the Makefile's `bpf` rule (it runs on any kernel with BTF) and
  shipped as detector/bpf/podlock.bpf.o.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    match = re.search(r"^COMPILED := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    if match is None:
        sys.exit("setup.py: the Makefile has no `COMPILED := ...` line naming the mypyc modules")
    return match.group(1).split()


class BuildPy(build_py):
    """Builds the BPF object before the package data is collected; leaves compiled sources out
    of the wheel."""

    def run(self) -> None:
        if not self.editable_mode:  # an editable install uses the checkout's own `make bpf`
            # -o system-deps: a wheel build checks for clang, it does not apt-get install it
            subprocess.run(["make", "--no-print-directory", "-o", "system-deps", "bpf"], check=True)
        super().run()

    def build_module(self, module: str, module_file: str, package: str) -> tuple[str, bool]:
        # only the build leaves them out: the sdist keeps every source
        if not self.editable_mode and os.path.normpath(module_file) in self._compiled:
            return module_file, False
        result: tuple[str, bool] = super().build_module(module, module_file, package)
        return result

    @property
    def _compiled(self) -> set[str]:
        return {os.path.normpath(p) for p in compiled_modules()}


def extensions() -> list[object]:
    # mypyc type-checks and generates C for a minute: only the commands that build pay for it.
    if not {"bdist_wheel", "build", "build_ext"} & set(sys.argv):
        return []
    from mypyc.build import mypycify

    modules = mypycify(compiled_modules(), group_name="webhook._compiled")
    for ext in modules:
        # no debug info and no build paths: two builds of one commit give the same bytes
        ext.extra_compile_args += ["-g0", f"-ffile-prefix-map={ROOT}=."]
        ext.extra_link_args += ["-g0", "-Wl,--strip-debug"]
    return list(modules)


setup(cmdclass={"build_py": BuildPy}, ext_modules=extensions())
