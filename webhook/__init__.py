"""The admission webhook, `podlock review` and `podlock lint`, sharing one policy engine.

`make compile` builds the admission path with mypyc into .so files beside these sources, and
Python imports a compiled module in preference to its .py. A source edited after the build
would then be ignored without a word, so importing the package refuses a stale build.
"""

from __future__ import annotations

import os


class StaleBuildError(ImportError):
    pass


def check_compiled(directory: str) -> None:
    """Raise StaleBuildError when a compiled module in `directory` is older than its source."""
    with os.scandir(directory) as entries:
        built = [(e.name, e.stat().st_mtime) for e in entries if e.name.endswith(".so")]
    for name, mtime in built:
        source = os.path.join(directory, name.partition(".")[0] + ".py")
        if os.path.exists(source) and os.path.getmtime(source) > mtime:
            raise StaleBuildError(
                f"{source} changed after it was compiled: run `make compile` "
                f"(or delete {directory}/*.so to run the source as it is)"
            )


check_compiled(os.path.dirname(os.path.abspath(__file__)))
