"""/metrics on a real 2-worker server adds up every worker, including replaced and reloaded ones."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from http_support import Launcher, Server
from prometheus_samples import Key
from prometheus_samples import samples as parse_samples

from webhook.config import Settings
from webhook.review import RequestError, review


def _bodies(example_raw: bytes) -> list[tuple[str, bytes]]:
    """Requests of every result: patched, denied, allowed, error."""
    doc = json.loads(example_raw)
    privileged = json.loads(example_raw)
    privileged["request"]["object"]["spec"]["containers"][0]["securityContext"] = {
        "privileged": True,
        "runAsUser": 0,
    }
    exempt = json.loads(example_raw)
    exempt["request"]["namespace"] = "kube-system"
    return [
        ("/mutate", example_raw),
        ("/validate", json.dumps(privileged).encode()),
        ("/validate/audit", json.dumps(doc).encode()),
        ("/mutate/warn", json.dumps(exempt).encode()),
        ("/validate/warn", b"{not json"),
    ]


def _fire(server: Server, calls: list[tuple[str, bytes]], threads: int = 8) -> None:
    """Send every call on its own connection, several at once, so both workers answer."""
    errors: list[str] = []
    todo = list(calls)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                path, body = todo.pop()
            status, data, _ = server.request("POST", path, body)
            if status not in (200, 400):
                errors.append(f"{path}: {status} {data[:80]!r}")

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert errors == []


def _expected(calls: list[tuple[str, bytes]], settings: Settings) -> Counter[Key]:
    """What podlock_admission_requests_total must say, computed with review() itself."""
    want: Counter[Key] = Counter()
    for path, body in calls:
        parts = path.strip("/").split("/")
        endpoint, mode = parts[0], parts[1] if len(parts) > 1 else "enforce"
        try:
            out = review(body, endpoint, mode, settings)  # type: ignore[arg-type]
        except RequestError:
            op, result, rules = "unknown", "error", ("none",)
        else:
            op, rules = out.operation, out.rules or ("none",)
            result = "denied" if not out.allowed else "patched" if out.patched else "allowed"
        for rule in rules:
            labels = {"endpoint": endpoint, "mode": mode, "operation": op}
            labels |= {"result": result, "rule": rule}
            want[("podlock_admission_requests_total", tuple(sorted(labels.items())))] += 1
    return want


def _wait_for_workers(server: Server, gone: list[int]) -> None:
    """Until the server runs 2 workers again, none of them one of `gone`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if len(pids) == 2 and not set(gone) & set(pids):
            return
        time.sleep(0.1)
    raise AssertionError(f"workers were not replaced: {server.worker_pids()} (gone: {gone})")


def test_totals_across_workers_a_replaced_worker_and_a_reload(
    cert_dir: Path, launch: Launcher, example_raw: bytes, settings: Settings
) -> None:
    server = launch(cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir / "ca.crt", workers=2)
    calls = _bodies(example_raw) * 60  # 300 requests
    _fire(server, calls[:100])

    # Replace one worker (gunicorn forks a new one): its counts must stay in the totals.
    first_workers = server.worker_pids()
    os.kill(first_workers[0], signal.SIGTERM)
    _wait_for_workers(server, gone=first_workers[:1])
    _fire(server, calls[100:200])

    # A reload (SIGHUP) starts new workers while the old ones drain: nothing is lost either.
    before_reload = server.worker_pids()
    server.proc.send_signal(signal.SIGHUP)
    _wait_for_workers(server, gone=before_reload)
    _fire(server, calls[200:])

    # Every scrape, whichever worker answers it, sees the same totals.
    want = _expected(calls, settings)
    for _ in range(6):
        status, text, ctype = server.request("GET", "/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        got = parse_samples(text.decode())
        counts = {k: v for k, v in got.items() if k[0] == "podlock_admission_requests_total"}
        assert counts == want
        answered = sum(
            v for (name, _), v in got.items() if name == "podlock_admission_duration_seconds_count"
        )
        assert answered == len(calls)
        assert got[("podlock_tls_certificate_expiry_seconds", ())] > 300 * 86400
