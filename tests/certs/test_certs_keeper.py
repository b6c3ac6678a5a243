"""certs/keeper.py's local edge: the served pair switched in one step on disk (read back by the
webhook's real ReloadingContext), and `podlock serve --certs self-managed` refusing bad starts
with one sentence. Its API side runs against the real cluster in
tests/cluster/test_certs_self_managed.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certs.keeper import install_pair
from certs.pki import PemPair, generate_ca, generate_serving
from webhook.tls import ReloadingContext

NOW = datetime.now(UTC)
CA = generate_ca(now=NOW)


def serving() -> PemPair:
    return generate_serving(CA, "podlock", "podlock-system", now=NOW)


def test_install_pair_switches_both_files_at_once(tmp_path: Path) -> None:
    first, second = serving(), serving()
    directory = tmp_path / "tls"
    assert install_pair(directory, first)
    assert not install_pair(directory, first)  # already there: nothing written
    cert, key = directory / "tls.crt", directory / "tls.key"
    assert (cert.read_bytes(), key.read_bytes()) == (first.cert, first.key)
    # Both names go through the one `..data` link: a reader never sees half a swap.
    assert os.readlink(cert) == "..data/tls.crt"
    assert os.readlink(key) == "..data/tls.key"
    assert (directory.stat().st_mode & 0o777, key.stat().st_mode & 0o777) == (0o700, 0o600)

    tls = ReloadingContext(str(cert), str(key), check_interval=0)
    assert install_pair(directory, second)
    assert (cert.read_bytes(), key.read_bytes()) == (second.cert, second.key)
    # Only the current pair's directory is left.
    assert len([p for p in directory.iterdir() if p.name.startswith("..pair-")]) == 1
    time.sleep(0.01)
    tls.maybe_reload()
    leaf = x509.load_pem_x509_certificate(second.cert)
    assert tls.pair.sha256 == leaf.fingerprint(hashes.SHA256()).hex()


def test_install_pair_replaces_plain_files(tmp_path: Path) -> None:
    # A directory that held files from another source (say, `podlock certs generate`).
    (tmp_path / "tls.crt").write_bytes(b"old")
    (tmp_path / "tls.key").write_bytes(b"old")
    pair = serving()
    assert install_pair(tmp_path, pair)
    assert (tmp_path / "tls.crt").read_bytes() == pair.cert
    assert (tmp_path / "tls.crt").is_symlink()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cert", "a.crt", "--key", "a.key"], "--cert and --key name files you provide"),
        (["--service", "Bad_Name"], "--service, --namespace or --host: service name 'Bad_Name'"),
        (["--host", "not a host"], "--service, --namespace or --host: host 'not a host'"),
        (["--cert-check-interval", "0"], "--cert-check-interval must be positive"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], "no API server credentials"),
    ],
)
def test_serve_self_managed_refuses_bad_starts_with_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    argv = [sys.executable, "-c", "import sys; from webhook.cli import main; sys.exit(main())"]
    argv += ["serve", "--certs", "self-managed", "--cert-dir", str(tmp_path / "tls"), *args]
    if "--kubeconfig" not in args:
        argv += ["--kubeconfig", str(tmp_path / "missing.kubeconfig")]
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("podlock serve: ")
    assert message in line
    assert not (tmp_path / "tls").exists()
