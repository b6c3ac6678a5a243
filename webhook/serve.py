"""`podlock serve`: the webhook app on gunicorn, TLS only.

Why these gunicorn settings:
- `gthread` workers keep connections open between requests; the `sync` worker closes each one,
  so every admission call would pay a TLS handshake.
- keep-alive 120 s, longer than the API server's 90 s idle timeout, so the API server (not us)
  closes idle connections and never sends a request on a connection we are closing.
- SIGTERM drains: gunicorn stops accepting, finishes in-flight requests for up to
  `GRACEFUL_TIMEOUT` seconds, then exits. Keep the pod's terminationGracePeriodSeconds above it.
- TLS 1.2 minimum and no plaintext listener: the `ssl_context` hook hands gunicorn, for every
  new connection, the context of `webhook.tls.ReloadingContext`, which follows certificate
  rotation on disk.
- The app is built once in the master (`preload_app`) and forked, so a bad policy file or
  certificate stops the server at start, with one line, before any worker runs.
"""

from __future__ import annotations

import argparse
import gc
import glob
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication

from webhook.config import ConfigError, Settings, load_settings
from webhook.tls import ReloadingContext, TLSError

DEFAULT_CERT = ".certs/tls.crt"
DEFAULT_KEY = ".certs/tls.key"
THREADS = 4  # per worker; admission is CPU-bound, the threads overlap TLS and socket waits
KEEPALIVE = 120
GRACEFUL_TIMEOUT = 25
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _Server(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, app: Callable[..., Any], options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Callable[..., Any]:
        return self._app


def _fail(message: str) -> int:
    print(f"podlock serve: {message}", file=sys.stderr)
    return 2


def _check_bind(bind: str) -> str | None:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8443 or [::]:8443"
    return None


def _metrics_dir() -> tuple[str, bool]:
    """The directory where workers share metric values, and whether we created it.

    A directory given in the environment is emptied of old worker files (they would add a
    previous run's counts); otherwise a private one is made and removed at exit."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        return given, False
    path = tempfile.mkdtemp(prefix="podlock-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path, True


def run(args: argparse.Namespace) -> int:
    cert = args.cert or DEFAULT_CERT
    key = args.key or DEFAULT_KEY
    if bool(args.cert) != bool(args.key):
        return _fail("give --cert and --key together")
    if (problem := _check_bind(args.bind)) is not None:
        return _fail(problem)
    if args.workers < 1:
        return _fail(f"--workers {args.workers}: need at least 1")
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        return _fail(str(err))
    if not args.cert and not (os.path.exists(cert) and os.path.exists(key)):
        return _fail(
            f"no {cert} / {key}: create them with `podlock certs generate --out .certs "
            "--host 127.0.0.1 --host localhost` (or `make run`), or pass --cert and --key"
        )
    try:
        tls = ReloadingContext(cert, key)
    except TLSError as err:
        return _fail(str(err))

    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S %z",
    )
    metrics_dir, owned = _metrics_dir()
    master = os.getpid()
    try:
        return _serve(args, settings, tls, cert, key)
    finally:
        # Forked workers leave through here too: only the master cleans up.
        if owned and os.getpid() == master:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(
    args: argparse.Namespace, settings: Settings, tls: ReloadingContext, cert: str, key: str
) -> int:
    # prometheus_client picks its multiprocess mode when first imported: after the env is set.
    from prometheus_client import multiprocess

    from webhook.app import create_app
    from webhook.metrics import Metrics, multiprocess_enabled

    if not multiprocess_enabled():  # something imported prometheus_client too early
        return _fail("metrics would count per worker: prometheus_client imported too early")
    metrics = Metrics(tls.seconds_until_expiry)
    tls.on_reload = metrics.tls_reloaded
    app = create_app(settings, tls=tls, metrics=metrics)

    def ssl_context(_config: Any, _default_factory: Any) -> Any:
        return tls.context()

    def child_exit(_server: Any, worker: Any) -> None:
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

    options: dict[str, Any] = {
        "bind": [args.bind],
        "workers": args.workers,
        "worker_class": "gthread",
        "threads": THREADS,
        "keepalive": KEEPALIVE,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "timeout": 30,
        "certfile": cert,
        "keyfile": key,
        "ssl_context": ssl_context,
        "child_exit": child_exit,
        "preload_app": True,
        "accesslog": None,  # one line per admission call is the API server's audit log's job
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "podlock",
    }
    # Everything loaded so far (Flask, the policy, the TLS context) lives as long as the
    # process: keep the collector from scanning it in every worker, and its pages shared.
    gc.freeze()
    _Server(app, options).run()
    return 0
