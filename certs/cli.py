"""`podlock certs generate`: write ca.crt, tls.crt and tls.key into a directory.
`podlock certs rotate`: ask the self-managed keepers to renew now."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime

from certs.pki import Bundle, CertError, generate_bundle
from certs.rotation import Rotation


def write_file(path: str, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically with permissions `mode` from the start, so a reader
    (a running `podlock serve`) never sees a half-written file or a readable key."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_bundle(out: str, bundle: Bundle) -> list[str]:
    """Write the bundle into `out` (created if missing); return the written paths."""
    os.makedirs(out, exist_ok=True)
    # Key last: a watcher that sees a new key also sees the certificate that goes with it.
    files = (
        ("ca.crt", bundle.ca_cert, 0o644),
        ("tls.crt", bundle.tls_cert, 0o644),
        ("tls.key", bundle.tls_key, 0o600),
    )
    written = []
    for name, data, mode in files:
        path = os.path.join(out, name)
        write_file(path, data, mode)
        written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    if args.certs_command == "rotate":
        return rotate(args)
    try:
        bundle = generate_bundle(args.service, args.namespace, args.host, now=datetime.now(UTC))
        paths = write_bundle(args.out, bundle)
    except CertError as e:
        print(f"podlock certs: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"podlock certs: cannot write to {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def rotate(args: argparse.Namespace) -> int:
    from certs.keeper import KeeperError, api_client, request_rotation

    what: Rotation = "ca" if args.ca else "serving"
    try:
        request_rotation(api_client(args.kubeconfig), args.namespace, args.secret, what)
    except KeeperError as e:
        print(f"podlock certs rotate: {e}", file=sys.stderr)
        return 2
    print(
        f"asked for a new {'CA and serving certificate' if args.ca else 'serving certificate'} "
        f"in Secret {args.namespace}/{args.secret}: the replicas act on it at their next check"
    )
    return 0
