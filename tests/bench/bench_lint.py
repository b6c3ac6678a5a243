"""`podlock lint` over the whole corpus against checkov over the same corpus, in the same run.

Both tools are run RUNS times each, interleaved (podlock, checkov, podlock, …) so a noisy
neighbour hurts both alike; wall time, CPU time and max RSS come from wait4() on each child.
Policy evaluation is timed separately with timeit over every pod spec of the corpus.

checkov is installed into its own venv (.bench/checkov-venv) on first use, and run as in
tests/corpus/checkov-baseline.md (plus --skip-path checkov-verdicts.json). podlock is given
the corpus's repository folders, i.e. the same manifests without checkov-verdicts.json.

Writes tests/bench/results/lint.md. Knobs: PODLOCK_BENCH_RUNS (default 5).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from webhook import manifests  # noqa: E402
from webhook.config import load_settings  # noqa: E402
from webhook.hardening import plan  # noqa: E402
from webhook.lint import judged_refs  # noqa: E402
from webhook.policy import evaluate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "lint.md"
CORPUS = ROOT / "tests" / "corpus"
CHECKOV_VENV = ROOT / ".bench" / "checkov-venv"
CHECKOV = CHECKOV_VENV / "bin" / "checkov"
RUNS = int(os.environ.get("PODLOCK_BENCH_RUNS", "5"))
CHECKS = "CKV_K8S_16,CKV_K8S_22,CKV_K8S_23,CKV_K8S_40"

TARGET_SPEEDUP = 25.0  # issue 11: at least 25x
TARGET_RSS_MIB = 60.0
TARGET_EVAL_US = 50.0


@dataclass(frozen=True)
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds, the child and its workers
    max_rss_mib: float
    code: int


def measure(command: list[str], env: dict[str, str] | None = None) -> Run:
    """Run a command with output discarded; its wall time, CPU time and max RSS."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss (KiB) of the child or of the largest of its own waited-for children.
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, child.returncode)


def ensure_checkov() -> str:
    if not CHECKOV.exists():
        print("installing checkov into", CHECKOV_VENV, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True)
        pip = [str(CHECKOV_VENV / "bin" / "pip"), "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "checkov"], check=True)
    done = subprocess.run([str(CHECKOV), "--version"], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def precompile() -> None:
    """Bytecode as an installed package has it: PYTHONDONTWRITEBYTECODE would otherwise make
    every podlock run compile its own modules."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "webhook")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def policy_timing() -> tuple[int, float, float, float]:
    """(pod specs, median µs per evaluate, median µs per hardening plan, parse MB/s)."""
    settings = load_settings(None)
    names, _ = manifests.discover([str(p) for p in corpus_folders()])
    started = time.perf_counter()
    sources = [manifests.read(name) for name in names]
    parse_seconds = time.perf_counter() - started
    size = sum(os.path.getsize(name) for name in names)
    specs = [
        ref
        for source in sources
        if isinstance(source, manifests.Source)
        for _, _, ref in judged_refs(source, settings)
    ]

    def evaluate_all() -> None:
        for ref in specs:
            evaluate(ref.spec, settings, "lint")

    def plan_all() -> None:
        for ref in specs:
            plan(ref, settings)

    per_eval = statistics.median(timeit.repeat(evaluate_all, number=20, repeat=7)) / 20 / len(specs)
    per_plan = statistics.median(timeit.repeat(plan_all, number=20, repeat=7)) / 20 / len(specs)
    return len(specs), per_eval * 1e6, per_plan * 1e6, size / parse_seconds / 1e6


def corpus_folders() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_dir())


def machine() -> str:
    cpu = cpu_model()
    load = os.getloadavg()
    return (
        f"nproc {os.cpu_count()}, CPU {cpu}, kernel {platform.release()}, "
        f"Python {platform.python_version()}, load average at start {load[0]:.2f}"
    )


def stats(runs: list[Run]) -> tuple[float, float, float, float, float]:
    walls = [r.wall for r in runs]
    return (
        min(walls),
        statistics.median(walls),
        max(walls),
        statistics.median(r.cpu for r in runs),
        max(r.max_rss_mib for r in runs),
    )


def main() -> int:
    if not (CORPUS / "SOURCES.md").is_file():
        print(f"bench_lint: the corpus is missing: {CORPUS}", file=sys.stderr)
        return 2
    host = machine()
    checkov_version = ensure_checkov()
    precompile()
    folders = [str(p) for p in corpus_folders()]
    podlock_cmd = [str(ROOT / ".venv" / "bin" / "podlock"), "lint", "--format", "json", *folders]
    checkov_cmd = [
        str(CHECKOV),
        "-d",
        str(CORPUS),
        "--framework",
        "kubernetes",
        "--check",
        CHECKS,
        "-o",
        "json",
        "--skip-download",
        "--skip-path",
        "checkov-verdicts.json",
    ]

    # One warm-up each (page cache, pyc), then interleaved measured runs.
    measure(podlock_cmd)
    measure(checkov_cmd)
    podlock: list[Run] = []
    checkov: list[Run] = []
    for index in range(RUNS):
        print(f"run {index + 1}/{RUNS}", flush=True)
        podlock.append(measure(podlock_cmd))
        checkov.append(measure(checkov_cmd))
    bad = [r.code for r in podlock + checkov if r.code not in (1, 2)]
    specs, eval_us, plan_us, parse_mbs = policy_timing()

    p_min, p_med, p_max, p_cpu, p_rss = stats(podlock)
    c_min, c_med, c_max, c_cpu, c_rss = stats(checkov)
    speedup = c_med / p_med
    rss = p_rss

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    files = sum(1 for _ in manifests.discover(folders)[0])
    lines = [
        "## Lint: podlock lint vs checkov over the corpus",
        "",
        f"- {host}",
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; checkov {checkov_version}",
        f"- corpus: {files} manifest files under tests/corpus ({specs} pod specs judged); "
        f"{RUNS} interleaved runs per tool after one warm-up each; wait4() wall/CPU/max RSS",
        "- podlock: `podlock lint --format json <corpus folders>`",
        f"- checkov: `checkov -d corpus --framework kubernetes --check {CHECKS} -o json "
        "--skip-download --skip-path checkov-verdicts.json`",
        "",
        "| tool | wall min s | wall median s | wall max s | CPU median s | max RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
        f"| podlock | {p_min:.3f} | {p_med:.3f} | {p_max:.3f} | {p_cpu:.3f} | {p_rss:.1f} |",
        f"| checkov | {c_min:.3f} | {c_med:.3f} | {c_max:.3f} | {c_cpu:.3f} | {c_rss:.1f} |",
        "",
        f"- policy evaluation: {eval_us:.1f} µs median per pod spec (timeit, {specs} specs); "
        f"hardening plan: {plan_us:.1f} µs per pod spec; parsing: {parse_mbs:.1f} MB/s "
        "(libyaml composer, single process)",
        "",
        "### Targets",
        "",
        f"- median wall: podlock {speedup:.1f}x faster than checkov (target >= "
        f"{TARGET_SPEEDUP:.0f}x): {verdict(speedup >= TARGET_SPEEDUP)}; CPU time "
        f"{c_cpu / p_cpu:.1f}x less",
        f"- max RSS: {rss:.1f} MiB (target <= {TARGET_RSS_MIB:.0f}): "
        f"{verdict(rss <= TARGET_RSS_MIB)}",
        f"- policy evaluation: {eval_us:.1f} µs per pod spec (target <= {TARGET_EVAL_US:.0f}): "
        f"{verdict(eval_us <= TARGET_EVAL_US)}",
    ]
    if bad:
        lines.append(f"- unexpected exit codes: {bad}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
