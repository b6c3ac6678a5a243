"""What one admission review costs in a loop, without HTTP: `review()` on the example Pod
CREATE (/mutate) and on the pod as hardened (/validate), each in a fresh interpreter.

Targets are a source tree (its `webhook/` package, compiled or not) and a policy; they are
timed interleaved, several rounds, so a busy neighbour slows them all alike. By default the
targets are this tree under the embedded policy (`profile: strict`) and under
`profile: core`; `--baseline DIR` (or PODLOCK_BENCH_BASELINE, for run_all.py) adds another
checkout's `webhook/` (say the commit before a change, built with `make compile` there) under
its own embedded policy, so a change's cost is measured against what it replaced on the same
machine in the same minutes.

Writes tests/bench/results/review.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "review.md"
EXAMPLE = ROOT / "examples" / "admission-review-pod.json"
ROUNDS = int(os.environ.get("PODLOCK_BENCH_ROUNDS", "5"))
TARGET = 1.15  # a /mutate review may cost at most 15% more than the baseline

# Run in the child, with the target tree first on sys.path: prints µs per /mutate and
# /validate review: the fastest of 400 timeit repeats of 20 calls (as timeit's documentation
# advises; on a shared machine a longer batch is nearly always cut by a neighbour, so short
# batches and many of them).
CHILD = """
import base64, json, sys, timeit
import jsonpatch
import webhook
from webhook.config import load_settings
from webhook.review import review
policy = sys.argv[2] or None
settings = load_settings(policy)
body = open(sys.argv[1], "rb").read()
answer = json.loads(review(body, "mutate", "enforce", settings).body)["response"]
doc = json.loads(body)
if "patch" in answer:
    patch = json.loads(base64.b64decode(answer["patch"]))
    doc["request"]["object"] = jsonpatch.apply_patch(doc["request"]["object"], patch)
validated = json.dumps(doc, separators=(",", ":")).encode()
verdict = json.loads(review(validated, "validate", "enforce", settings).body)["response"]
assert verdict["allowed"], verdict
compiled = any(getattr(m, "__file__", "").endswith(".so") for m in [sys.modules["webhook.review"]])
def per(raw, endpoint):
    loop = lambda: review(raw, endpoint, "enforce", settings)
    return min(timeit.repeat(loop, number=20, repeat=400)) / 20 * 1e6
print(json.dumps({"mutate": per(body, "mutate"), "validate": per(validated, "validate"),
                  "compiled": compiled}))
"""


def _run(tree: Path, policy: str) -> dict[str, float]:
    import json

    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(EXAMPLE), policy],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--baseline",
        default=os.environ.get("PODLOCK_BENCH_BASELINE"),
        help="another checkout whose webhook/ is the baseline",
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="podlock-bench-") as tmp:
        core = Path(tmp) / "core.yaml"
        core.write_text("profile: core\n")
        targets: list[tuple[str, Path, str]] = [
            ("this tree, profile: strict (the default)", ROOT, ""),
            ("this tree, profile: core", ROOT, str(core)),
        ]
        if args.baseline:
            targets.insert(0, ("baseline tree, its default policy", Path(args.baseline), ""))
        samples: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
        for _ in range(ROUNDS):
            for name, tree, policy in targets:
                samples[name].append(_run(tree, policy))
    lines = [
        "## Review in a loop: the cost of one admission decision without HTTP",
        "",
        f"- nproc {os.cpu_count()}, CPU {cpu_model()}, kernel {platform.release()}, "
        f"Python {platform.python_version()}, load average at start {load:.2f}",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; `review()` on examples/admission-review-pod"
        ".json (/mutate) and on the pod after podlock's patch (/validate), enforce mode; "
        f"{ROUNDS} interleaved rounds of a fresh interpreter per target, each the fastest of 400 "
        "timeit repeats of 20 calls; the median round is shown",
        "",
        "| target | compiled | /mutate µs | /validate µs |",
        "|---|---|---:|---:|",
    ]
    medians: dict[str, tuple[float, float]] = {}
    for name, _, _ in targets:
        rounds = samples[name]
        mutate = statistics.median(r["mutate"] for r in rounds)
        validate = statistics.median(r["validate"] for r in rounds)
        medians[name] = (mutate, validate)
        compiled = "yes" if all(r["compiled"] for r in rounds) else "no"
        lines.append(f"| {name} | {compiled} | {mutate:.1f} | {validate:.1f} |")
    status = 0
    if args.baseline:
        base = medians[targets[0][0]]
        strict = medians[targets[1][0]]
        ratio = strict[0] / base[0]
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        status = 0 if verdict == "PASS" else 1
        lines += [
            "",
            "### Target",
            "",
            f"- /mutate under the strict default costs {ratio:.2f}x the baseline's "
            f"(target <= {TARGET:.2f}x): {verdict}; /validate {strict[1] / base[1]:.2f}x",
        ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
