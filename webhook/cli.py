"""The `podlock` command: argument parsing and dispatch only.

Each subcommand's module is imported only when that subcommand runs, so
`podlock lint` never pays for Flask, gunicorn or the kubernetes client.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> "module:function"; the function takes the parsed namespace, returns an exit code.
_HANDLERS = {
    "lint": "webhook.lint:run",
    "review": "webhook.review_cli:run",
    "serve": "webhook.serve:run",
    "certs": "certs.cli:run",
    "detect": "detector.agent:run",
    "version": "webhook.version:run",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podlock",
        description="Keep Kubernetes containers immutable: lint, admit, and watch for drift.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lint = sub.add_parser("lint", help="lint manifests with the admission policy (dry run)")
    lint.add_argument("paths", nargs="+", metavar="PATH", help="files, directories, or - for stdin")
    lint.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    lint.add_argument("--fix", action="store_true", help="rewrite files with the hardening")
    lint.add_argument("--diff", action="store_true", help="print the fix as a unified diff")
    lint.add_argument("--config", metavar="FILE", help="policy file (default: embedded policy)")

    review = sub.add_parser("review", help="answer one AdmissionReview like the webhook does")
    action = review.add_mutually_exclusive_group()
    action.add_argument("--mutate", dest="endpoint", action="store_const", const="mutate")
    action.add_argument("--validate", dest="endpoint", action="store_const", const="validate")
    review.add_argument("--mode", choices=("enforce", "warn", "audit"), default="enforce")
    review.add_argument("--config", metavar="FILE")
    review.add_argument("input", metavar="FILE", help="AdmissionReview JSON, or - for stdin")
    review.set_defaults(endpoint="validate")

    serve = sub.add_parser("serve", help="serve the admission webhook over TLS")
    serve.add_argument("--bind", default="127.0.0.1:8443", metavar="HOST:PORT")
    serve.add_argument("--cert", metavar="FILE")
    serve.add_argument("--key", metavar="FILE")
    serve.add_argument("--config", metavar="FILE")
    serve.add_argument("--workers", type=int, default=2, metavar="N")
    managed = serve.add_argument_group(
        "self-managed certificates",
        "--certs self-managed: podlock keeps a CA and a serving pair in a Secret, writes the "
        "CA into both webhook configurations' caBundle and renews both before they expire",
    )
    managed.add_argument("--certs", choices=("files", "self-managed"), default="files")
    managed.add_argument("--namespace", default="podlock-system", metavar="NS")
    managed.add_argument("--secret", default="podlock-tls", metavar="NAME")
    managed.add_argument("--service", default="podlock", metavar="NAME", help="for the DNS names")
    managed.add_argument(
        "--webhook-configuration",
        default="podlock",
        metavar="NAME",
        help="the name of both the Mutating and the Validating configuration",
    )
    managed.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="H",
        help="another name or IP address for the serving certificate (a webhook called by URL)",
    )
    managed.add_argument("--cert-dir", default="/tmp/podlock-tls", metavar="DIR")
    managed.add_argument("--kubeconfig", metavar="FILE", help="default: in-cluster credentials")
    managed.add_argument("--cert-check-interval", type=float, default=30.0, metavar="SECONDS")
    managed.add_argument("--ca-trust-delay", type=float, default=300.0, metavar="SECONDS")

    certs = sub.add_parser("certs", help="TLS material for the webhook")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    gen = certs_sub.add_parser("generate", help="write ca.crt, tls.crt and tls.key")
    gen.add_argument("--out", required=True, metavar="DIR")
    gen.add_argument("--service", default="podlock", metavar="NAME")
    gen.add_argument("--namespace", default="podlock-system", metavar="NS")
    gen.add_argument("--host", action="append", default=[], metavar="H")
    rotate = certs_sub.add_parser(
        "rotate", help="ask `podlock serve --certs self-managed` to renew now"
    )
    rotate.add_argument("--ca", action="store_true", help="the CA too (in two overlapping steps)")
    rotate.add_argument("--namespace", default="podlock-system", metavar="NS")
    rotate.add_argument("--secret", default="podlock-tls", metavar="NAME")
    rotate.add_argument("--kubeconfig", metavar="FILE")

    detect = sub.add_parser("detect", help="run the eBPF drift detector on this node")
    detect.add_argument("--config", metavar="FILE")
    detect.add_argument("--rules", action="append", default=[], metavar="FILE")
    detect.add_argument("--json", action="store_true", help="JSON alerts on stdout")
    detect.add_argument(
        "--pidfile",
        metavar="PATH",
        help="written once the probes are attached, removed on exit; kill -1 $(cat PATH) reloads",
    )
    detect.add_argument(
        "--audit-log", metavar="FILE", help="follow the API server's audit log: who ran each exec"
    )
    detect.add_argument(
        "--audit-webhook-bind",
        metavar="HOST:PORT",
        help="serve the API server's audit webhook backend here: who ran each exec",
    )
    detect.add_argument(
        "--metrics-bind", metavar="HOST:PORT", help="serve Prometheus metrics (off by default)"
    )

    sub.add_parser("version", help="podlock's version, compiled or not, the BPF object's build id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, _, func_name = _HANDLERS[args.command].partition(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `podlock lint … | head` closed our stdout: not an error of ours.
        sys.stderr.close()
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
