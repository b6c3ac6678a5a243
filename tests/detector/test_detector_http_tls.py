"""http_output over https://, against a real TLS receiver: the receiver's certificate checked
against `ca_cert`, `ca_path` or not at all (`insecure`), and a client certificate presented
with `mtls` to a receiver that requires one (as falcosidekick can)."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from alert_samples import numbered_alert as alert

from certs.pki import generate_ca, generate_client, generate_serving
from detector.config import HttpOutput, load_detector_settings
from detector.errors import ConfigError
from detector.outputs import Output, Outputs
from detector.outputs.base import json_line
from detector.outputs.delivery import Limits
from detector.outputs.http import HttpWriter


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: ClassVar[list[dict[str, object]]] = []
    agents: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(json.loads(body))
        type(self).agents.append(self.headers["User-Agent"])
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Receiver:
    url: str
    handler: type[_Receiver]
    ca: Path  # the CA that signed the receiver's certificate, and the client's
    client: tuple[Path, Path]  # a client certificate and key that CA signed
    mutual: bool  # the receiver requires a client certificate from that CA


@pytest.fixture(params=[False, True], ids=["server-auth", "mutual"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    now = datetime.now(UTC)
    ca = generate_ca(now=now)
    serving = generate_serving(ca, "sidekick", "falco", ["127.0.0.1"], now=now)
    client = generate_client(ca, "podlock-detector", now=now)
    paths = _write(tmp_path, ca=ca.cert, crt=serving.cert, key=serving.key)
    client_paths = _write(tmp_path, client_crt=client.cert, client_key=client.key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["crt"], paths["key"])
    if request.param:  # the receiver refuses a client without a certificate from the CA
        context.load_verify_locations(paths["ca"])
        context.verify_mode = ssl.CERT_REQUIRED
    handler = type("Handler", (_Receiver,), {"bodies": [], "agents": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Receiver(
            f"https://127.0.0.1:{server.server_address[1]}/alerts",
            handler,
            paths["ca"],
            (client_paths["client_crt"], client_paths["client_key"]),
            request.param,
        )
    finally:
        server.shutdown()
        server.server_close()


def _write(directory: Path, **files: bytes) -> dict[str, Path]:
    paths = {}
    for name, data in files.items():
        path = directory / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = path
    return paths


def send(settings: HttpOutput, count: int = 3) -> Outputs:
    """`count` alerts through an http output with these settings; closed once all are
    delivered or two attempts failed (then after 3 s more at most)."""
    out = Outputs([Output("http", HttpWriter(settings), json_line, Limits(max_backoff_s=0.2))])
    out.emit_many([alert(n) for n in range(count)])
    stats = out.stats()["http"]
    wait_for(lambda: stats.delivered == count or stats.retries >= 2)
    out.close(drain_s=3.0)
    return out


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_alerts_reach_a_receiver_whose_certificate_the_ca_cert_vouches_for(
    receiver: Receiver,
) -> None:
    settings = HttpOutput(enabled=True, url=receiver.url, ca_cert=str(receiver.ca), mtls=True,
                          client_cert=str(receiver.client[0]),
                          client_key=str(receiver.client[1]))  # fmt: skip
    out = send(settings, count=3)
    assert out.stats()["http"].delivered == 3
    names = [b["output_fields"]["fd.name"] for b in receiver.handler.bodies]  # type: ignore[index]
    assert names == [f"/etc/{n}" for n in range(3)]
    assert set(receiver.handler.agents) == {"podlock-detector"}


def test_without_the_ca_the_receiver_is_not_trusted_and_nothing_is_sent(
    receiver: Receiver,
) -> None:
    out = send(HttpOutput(enabled=True, url=receiver.url, timeout_s=1.0), count=2)
    assert out.stats()["http"].delivered == 0
    assert receiver.handler.bodies == []


def test_insecure_skips_the_check_as_falco_does(receiver: Receiver) -> None:
    settings = HttpOutput(enabled=True, url=receiver.url, insecure=True, user_agent="falco-x")
    settings = replace(settings, mtls=True, client_cert=str(receiver.client[0]),
                       client_key=str(receiver.client[1]))  # fmt: skip
    assert send(settings, count=2).stats()["http"].delivered == 2
    assert set(receiver.handler.agents) == {"falco-x"}


def test_ca_path_is_a_hashed_directory_of_cas(receiver: Receiver, tmp_path: Path) -> None:
    directory = tmp_path / "cas"
    directory.mkdir()
    (directory / "receiver-ca.pem").write_bytes(receiver.ca.read_bytes())
    subprocess.run(["openssl", "rehash", str(directory)], check=True)
    settings = HttpOutput(enabled=True, url=receiver.url, ca_path=str(directory), mtls=True,
                          client_cert=str(receiver.client[0]),
                          client_key=str(receiver.client[1]))  # fmt: skip
    assert send(settings, count=1).stats()["http"].delivered == 1


def test_without_mtls_only_a_receiver_that_asks_for_no_client_certificate_takes_it(
    receiver: Receiver,
) -> None:
    out = send(HttpOutput(enabled=True, url=receiver.url, ca_cert=str(receiver.ca)), count=1)
    assert out.stats()["http"].delivered == (0 if receiver.mutual else 1)
    assert len(receiver.handler.bodies) == (0 if receiver.mutual else 1)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"ca_cert": "missing"}, r"http_output.ca_cert: cannot be read \(No such file"),
        ({"ca_cert": "garbage"}, r"http_output.ca_cert: not a usable PEM"),
        ({"client": "missing"}, r"http_output.client_cert: .* cannot be read"),
        ({"client": "garbage"}, r"http_output.client_cert: .* not a usable PEM"),
    ],
)
def test_unusable_tls_files_are_one_sentence_naming_the_key(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    pick = {"missing": str(tmp_path / "nosuch.pem"), "garbage": str(garbage)}
    config = tmp_path / "podlock-detect.yaml"
    lines = ["http_output:", "  enabled: true", "  url: https://127.0.0.1:1/"]
    if "ca_cert" in files:
        lines.append(f"  ca_cert: {pick[files['ca_cert']]}")
    if "client" in files:
        lines += ["  mtls: true", f"  client_cert: {pick[files['client']]}",
                  f"  client_key: {pick[files['client']]}"]  # fmt: skip
    config.write_text("\n".join(lines) + "\n")
    settings = load_detector_settings(str(config), [], environ={})
    with pytest.raises(ConfigError, match=message):
        HttpWriter(settings.http_output)


@pytest.mark.parametrize("receiver", [True], ids=["mutual"], indirect=True)
def test_a_renewed_client_certificate_is_read_for_the_next_connection(
    receiver: Receiver, tmp_path: Path
) -> None:
    """The pair on disk is replaced (as a renewed Secret is): no restart, no reload."""
    cert, key = tmp_path / "renewed.crt", tmp_path / "renewed.key"
    stranger = generate_ca(now=datetime.now(UTC))  # not the CA the receiver trusts
    wrong = generate_client(stranger, "podlock-detector", now=datetime.now(UTC))
    cert.write_bytes(wrong.cert)
    key.write_bytes(wrong.key)
    settings = HttpOutput(enabled=True, url=receiver.url, ca_cert=str(receiver.ca), mtls=True,
                          client_cert=str(cert), client_key=str(key))  # fmt: skip
    out = Outputs([Output("http", HttpWriter(settings), json_line, Limits(max_backoff_s=0.2))])
    try:
        out.emit(alert(1))
        wait_for(lambda: out.stats()["http"].retries >= 2)  # refused handshakes, retried
        assert receiver.handler.bodies == []
        cert.write_bytes(receiver.client[0].read_bytes())
        key.write_bytes(receiver.client[1].read_bytes())
        wait_for(lambda: bool(receiver.handler.bodies))  # the renewed certificate is used
    finally:
        out.close(drain_s=3.0)
    assert out.stats()["http"].delivered == 1
