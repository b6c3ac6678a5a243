"""The pods the cluster tests create: busybox (cluster_images.BUSYBOX) sleeping, with the
image's numeric non-root user, no added capabilities, no host access and no writable mounts of
its own, so podlock admits it unless a test says otherwise."""

from __future__ import annotations

from typing import Any

from cluster_images import BUSYBOX


def sleeping_pod(
    name: str,
    namespace: str,
    *,
    image: str = BUSYBOX.ref,
    container: str = "main",
    security: dict[str, Any] | None = None,
    pod_security: dict[str, Any] | None = None,
    command: tuple[str, ...] = ("sleep", "3600"),
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": container,
                "image": image,
                "imagePullPolicy": "Never",
                **({"command": list(command)} if command else {}),
                **({"securityContext": security} if security is not None else {}),
            }
        ],
    }
    if pod_security is not None:
        spec["securityContext"] = pod_security
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
