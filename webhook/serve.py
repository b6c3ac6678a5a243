"""`podlock serve`: the webhook app on gunicorn, TLS only.

Why these gunicorn settings:
- `gthread` workers keep connections open between requests; the `sync` worker closes each one,
  so every admission call would pay a TLS handshake. podlock's variant (webhook/worker.py)
  gives a connection to a thread only once a request arrives on it.
- keep-alive 120 s, longer than the API server's 90 s idle timeout, so the API server (not us)
  closes idle connections and never sends a request on a connection we are closing.
- SIGTERM drains: gunicorn stops accepting, finishes in-flight requests for up to
  `GRACEFUL_TIMEOUT` seconds, then exits. Keep the pod's terminationGracePeriodSeconds above it.
- TLS 1.2 minimum and no plaintext listener: the `ssl_context` hook hands gunicorn, for every
  new connection, the context of `webhook.tls.ReloadingContext`, which follows certificate
  rotation on disk.
- The app is built once in the master (`preload_app`) and forked, so a bad policy file or
  certificate stops the server at start, with one line, before any worker runs.
- Each worker accepts on its own SO_REUSEPORT socket (see `PerWorkerListeners`), so the kernel
  spreads keep-alive connections over the workers instead of the first worker to wake taking
  them all.
- Each worker counts its metrics in its own slot of a table shared by all (see `WorkerSlots`
  and webhook.metrics); a scrape adds them up.
- With `--certs self-managed` the process that starts is the certificate keeper
  (certs/keeper.py): it makes sure the Secret, the caBundles and the pair in `--cert-dir` are
  right before gunicorn starts, then forks gunicorn and keeps them right while it runs,
  forwarding signals to it and exiting with it. A keeper that dies takes the pod with it, and
  no thread runs beside gunicorn's forks.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

from webhook.app import create_app
from webhook.config import ConfigError, Settings, load_settings
from webhook.metrics import MAX_SLOTS, Metrics
from webhook.tls import ReloadingContext, TLSError
from webhook.worker import RequestReadyWorker

if TYPE_CHECKING:
    from certs.keeper import Keeper

DEFAULT_CERT = ".certs/tls.crt"
DEFAULT_KEY = ".certs/tls.key"
THREADS = 4  # per worker; admission is CPU-bound, the threads overlap TLS and socket waits
KEEPALIVE = 120
GRACEFUL_TIMEOUT = 25
# A reload (SIGHUP) starts new workers while the old ones drain: leave metrics slots for that.
MAX_WORKERS = MAX_SLOTS // 4
# --certs self-managed: how long the first reconcile may keep failing before serve gives up
# (the pod then restarts with back-off), and the retry pace after a failed one.
KEEPER_START_TIMEOUT = 60.0
KEEPER_RETRY = 5.0
# What the keeper passes on to gunicorn (its reload, drain and worker-count signals).
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGWINCH,
)
PR_SET_PDEATHSIG = 1


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


class PerWorkerListeners:
    """gunicorn hooks giving every worker its own listening socket on the bound address.

    With one shared listener, whichever worker wakes first accepts; a client that opens its
    keep-alive connections in a burst (the API server, a load tool) can land them all on one
    worker, which then runs at 100% of a core, with its threads fighting over the GIL, while
    the others idle. With SO_REUSEPORT the kernel hashes each new connection to one of the
    workers' sockets. The master's own socket is closed once the address is known (a
    listening socket nobody accepts on would swallow its share of connections); a worker that
    exits resets the connections still waiting in its accept queue, as with nginx `reuseport`.
    """

    def __init__(self) -> None:
        self._addresses: list[tuple[socket.AddressFamily, Any, int]] = []

    def when_ready(self, arbiter: Any) -> None:  # in the master, before any worker is forked
        self._addresses = [_listening_address(lnr.sock) for lnr in arbiter.LISTENERS]
        for lnr in arbiter.LISTENERS:
            lnr.close()
        arbiter.LISTENERS = []  # what gunicorn hands to new workers, and closes at exit

    def post_fork(self, arbiter: Any, worker: Any) -> None:  # in the new worker
        worker.sockets = [_listen(*address, arbiter.cfg.backlog) for address in self._addresses]

    def hooks(self) -> dict[str, Any]:
        return {"when_ready": self.when_ready, "post_fork": self.post_fork}


class WorkerSlots:
    """A gunicorn hook giving every new worker a metrics slot that no live worker uses.

    Runs in the master just before the fork, so the worker starts with the slot already chosen.
    A replaced worker's slot (and its counts) goes to the next worker forked.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def pre_fork(self, arbiter: Any, worker: Any) -> None:
        taken = {getattr(w, "podlock_slot", None) for w in arbiter.WORKERS.values()}
        free = [slot for slot in range(self._metrics.slots) if slot not in taken]
        if not free:  # only after reloads in a row, each leaving old workers draining
            logging.getLogger("podlock").warning(
                "no free metrics slot: a worker shares slot 0, some counts may be lost"
            )
            free = [0]
        worker.podlock_slot = free[0]
        self._metrics.use_slot(free[0])

    def hooks(self) -> dict[str, Any]:
        return {"pre_fork": self.pre_fork}


def _listening_address(sock: socket.socket) -> tuple[socket.AddressFamily, Any, int]:
    v6only = 0
    if sock.family == socket.AF_INET6:
        v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    return sock.family, sock.getsockname(), v6only


def _listen(family: socket.AddressFamily, address: Any, v6only: int, backlog: int) -> Any:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted sockets inherit this. gunicorn writes the headers and the body of a response
    # separately: with Nagle the body would wait for the client's delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    sock.bind(address)
    sock.listen(backlog)
    return sock


def _fail(message: str) -> int:
    print(f"podlock serve: {message}", file=sys.stderr)
    return 2


def _check_bind(bind: str) -> str | None:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8443 or [::]:8443"
    return None


def run(args: argparse.Namespace) -> int:
    self_managed = args.certs == "self-managed"
    if self_managed and (args.cert or args.key):
        return _fail(
            "--cert and --key name files you provide; with --certs self-managed podlock "
            "makes its own in --cert-dir"
        )
    if bool(args.cert) != bool(args.key):
        return _fail("give --cert and --key together")
    cert = args.cert or DEFAULT_CERT
    key = args.key or DEFAULT_KEY
    if (problem := _check_bind(args.bind)) is not None:
        return _fail(problem)
    if not 1 <= args.workers <= MAX_WORKERS:
        return _fail(f"--workers {args.workers}: must be between 1 and {MAX_WORKERS}")
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        return _fail(str(err))
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S %z",
    )
    keeper = None
    if self_managed:
        from certs.keeper import KeeperError, keeper_from_args

        try:
            keeper = keeper_from_args(args)
            _first_reconcile(keeper)
        except KeeperError as err:
            return _fail(str(err))
        cert, key = keeper.cert_path, keeper.key_path
    elif not args.cert and not (os.path.exists(cert) and os.path.exists(key)):
        return _fail(
            f"no {cert} / {key}: create them with `podlock certs generate --out .certs "
            "--host 127.0.0.1 --host localhost` (or `make run`), or pass --cert and --key"
        )
    try:
        tls = ReloadingContext(cert, key)
    except TLSError as err:
        return _fail(str(err))
    if keeper is not None:
        return _serve_beside_keeper(keeper, args, lambda: _serve(args, settings, tls, cert, key))
    return _serve(args, settings, tls, cert, key)


def _first_reconcile(keeper: Keeper) -> None:
    """Until the pair to serve is on disk; raises the last KeeperError after the timeout."""
    from certs.keeper import KeeperError

    deadline = time.monotonic() + KEEPER_START_TIMEOUT
    while True:
        try:
            keeper.reconcile()
            return
        except KeeperError as err:
            if time.monotonic() + KEEPER_RETRY > deadline:
                raise
            logging.getLogger("podlock.certs").warning("%s; retrying", err)
            time.sleep(KEEPER_RETRY)


def _serve_beside_keeper(keeper: Keeper, args: argparse.Namespace, serve: Callable[[], int]) -> int:
    """gunicorn in a child process; this one keeps the certificates until gunicorn exits."""
    from certs.keeper import KeeperError

    pid = os.fork()
    if pid == 0:  # gunicorn's master (and, forked from it, its workers): exits as usual
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # never outlive the keeper
        return serve()
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, lambda signum, _frame: os.kill(pid, signum))
    log = logging.getLogger("podlock.certs")
    next_check = time.monotonic() + args.cert_check_interval
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code  # killed by a signal: as a shell says
        if time.monotonic() >= next_check:
            try:
                keeper.reconcile()
                next_check = time.monotonic() + args.cert_check_interval
            except KeeperError as err:
                log.warning("%s; retrying in %.0f s", err, KEEPER_RETRY)
                next_check = time.monotonic() + min(KEEPER_RETRY, args.cert_check_interval)
        time.sleep(min(0.2, args.cert_check_interval))


def _serve(
    args: argparse.Namespace, settings: Settings, tls: ReloadingContext, cert: str, key: str
) -> int:
    metrics = Metrics(tls.seconds_until_expiry, slots=MAX_SLOTS)
    tls.on_reload = metrics.tls_reloaded
    app = create_app(settings, tls=tls, metrics=metrics)

    def ssl_context(_config: Any, _default_factory: Any) -> Any:
        return tls.context()

    options: dict[str, Any] = {
        "bind": [args.bind],
        "workers": args.workers,
        "worker_class": RequestReadyWorker,
        "threads": THREADS,
        "keepalive": KEEPALIVE,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "timeout": 30,
        "certfile": cert,
        "keyfile": key,
        "ssl_context": ssl_context,
        **PerWorkerListeners().hooks(),
        **WorkerSlots(metrics).hooks(),
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
