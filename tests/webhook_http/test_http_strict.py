"""The strict profile over HTTP: the Flask app with its test client, and `podlock serve`
(gunicorn over TLS) with a policy file, refusing `kubectl debug node/…` and `kubectl debug`
into a pod when exec-into-hardened-pod is deny."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from http_support import Launcher
from strict_reviews import (
    debug_into,
    debug_node_pod,
    hardened_container,
    hardened_pod,
    review,
    root_ptrace_debugger,
)

from webhook.app import create_app
from webhook.config import Settings


def _answer(body: bytes) -> dict[str, Any]:
    response: dict[str, Any] = json.loads(body)["response"]
    return response


def test_flask_app_refuses_and_hardens(settings: Settings) -> None:
    client = create_app(settings).test_client()
    node = client.post("/validate/enforce", data=review("Pod", debug_node_pod()))
    assert node.status_code == 200
    answer = _answer(node.data)
    assert answer["allowed"] is False and "hostPID is true" in answer["status"]["message"]

    debug = debug_into(hardened_pod(), root_ptrace_debugger())
    mutated = _answer(client.post("/mutate/enforce", data=debug).data)
    ops = json.loads(base64.b64decode(mutated["patch"]))
    assert {op["path"].rsplit("/", 1)[1] for op in ops} == {
        "readOnlyRootFilesystem",
        "runAsNonRoot",
    }
    refused = _answer(client.post("/validate/enforce", data=debug).data)
    assert refused["allowed"] is False and "SYS_PTRACE" in refused["status"]["message"]

    denying = create_app(replace(settings, exec_action="deny")).test_client()
    clean_debug = debug_into(hardened_pod(), hardened_container("debugger-ok"))
    answer = _answer(denying.post("/validate/enforce", data=clean_debug).data)
    assert (
        answer["allowed"] is False
        and "kubectl debug into pod shop/web" in answer["status"]["message"]
    )
    warn = _answer(denying.post("/validate/warn", data=clean_debug).data)
    assert warn["allowed"] is True and warn["warnings"]


def test_gunicorn_with_a_policy_file(launch: Launcher, cert_dir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  exec-into-hardened-pod: deny\n")
    server = launch(
        cert_dir / "tls.crt",
        cert_dir / "tls.key",
        cert_dir / "ca.crt",
        workers=1,
        extra_args=["--config", str(policy)],
    )
    status, body, _ = server.request("POST", "/validate", review("Pod", debug_node_pod()))
    assert status == 200 and _answer(body)["allowed"] is False
    clean_debug = debug_into(hardened_pod(), hardened_container("debugger-ok"))
    status, body, _ = server.request("POST", "/validate/enforce", clean_debug)
    answer = _answer(body)
    assert status == 200 and answer["allowed"] is False
    assert "exec-into-hardened-pod" in answer["status"]["message"]
    # The same pod with the debugger already there (no new ephemeral container): admitted.
    pod = hardened_pod()
    pod["spec"]["ephemeralContainers"] = [hardened_container("debugger-ok")]
    again = review("Pod", pod, "UPDATE", old=pod, sub_resource="ephemeralcontainers")
    status, body, _ = server.request("POST", "/validate/enforce", again)
    assert status == 200 and _answer(body)["allowed"] is True
    assert server.stop() == 0
