"""Decode only the parts of an AdmissionReview that podlock reads.

Most of a Pod review is what podlock never judges: env, resources, probes, ports, managed
fields. msgspec decodes the body against the TypedDicts below and skips, without building them,
the keys they do not name; the result is the same plain dicts and lists a full parse gives, only
smaller, so the policy code cannot tell the difference. A body whose shape the schema does not
expect (a null or a string where a list should be) goes to the full parse instead and is
judged as before; both parse numbers alike (an integer beyond 64 bits stays an integer, where
orjson would make it a float). A body that is not JSON is refused with orjson's message, which
names the line and column. msgspec does not check what it skips: a bad UTF-8 byte or an
out-of-range number in a field podlock never reads leaves the body judged on the fields it does
read, where a full parse would refuse it (the API server never sends such a body).

Whoever makes podspecs, policy, hardening or review read another field names it here.
tests/webhook/test_projection.py compares both parses over real manifests and fuzzed reviews.
"""

from __future__ import annotations

from typing import Any, TypedDict

import msgspec
import orjson


class _Empty(TypedDict, total=False):
    """A mapping whose presence is what counts (a volume's source): its keys are skipped."""


class _Mount(TypedDict, total=False):
    name: Any
    mountPath: Any
    readOnly: Any


class _Device(TypedDict, total=False):
    devicePath: Any


class _Capabilities(TypedDict, total=False):
    add: Any
    drop: Any


class _Profile(TypedDict, total=False):
    """seccompProfile, appArmorProfile, seLinuxOptions, windowsOptions: the fields judged."""

    type: Any
    user: Any
    role: Any
    hostProcess: Any


class _ContainerSecurity(TypedDict, total=False):
    privileged: Any
    runAsUser: Any
    runAsNonRoot: Any
    readOnlyRootFilesystem: Any
    allowPrivilegeEscalation: Any
    capabilities: _Capabilities | None
    seccompProfile: _Profile | None
    appArmorProfile: _Profile | None
    seLinuxOptions: _Profile | None
    windowsOptions: _Profile | None
    procMount: Any


class _Container(TypedDict, total=False):
    name: Any
    image: Any
    imagePullPolicy: Any
    securityContext: _ContainerSecurity | None
    volumeMounts: list[_Mount]
    volumeDevices: list[_Device]
    terminationMessagePath: Any


class _Named(TypedDict, total=False):
    """A pod's `os`: only the name is read."""

    name: Any


class _HostPath(TypedDict, total=False):
    path: Any


class _Volume(TypedDict, total=False):
    """A volume: its name, and its type (the one other key), named so messages can say it;
    the source itself is skipped, but for hostPath's path. policy.READ_ONLY_VOLUMES must be
    here, or their mounts would be judged writable (test_projection checks)."""

    name: Any
    hostPath: _HostPath | None
    configMap: _Empty | None
    secret: _Empty | None
    downwardAPI: _Empty | None
    projected: _Empty | None
    image: _Empty | None
    emptyDir: _Empty | None
    persistentVolumeClaim: _Empty | None
    ephemeral: _Empty | None
    csi: _Empty | None
    gitRepo: _Empty | None
    nfs: _Empty | None
    iscsi: _Empty | None
    rbd: _Empty | None
    cephfs: _Empty | None
    fc: _Empty | None
    flexVolume: _Empty | None
    glusterfs: _Empty | None
    awsElasticBlockStore: _Empty | None
    gcePersistentDisk: _Empty | None
    azureDisk: _Empty | None
    azureFile: _Empty | None
    cinder: _Empty | None
    vsphereVolume: _Empty | None
    portworxVolume: _Empty | None
    scaleIO: _Empty | None
    storageos: _Empty | None
    quobyte: _Empty | None
    photonPersistentDisk: _Empty | None
    flocker: _Empty | None


# Of a pod's annotations and labels, only podlock's own keys are read (policy.OPT_OUT_KEY,
# hardening.WRITABLE_PATHS_KEY); test_projection checks that this list names them all.
_PodlockKeys = TypedDict(
    "_PodlockKeys", {"podlock.io/exempt": Any, "podlock.io/writable-paths": Any}, total=False
)


class _Metadata(TypedDict, total=False):
    name: Any
    generateName: Any
    namespace: Any
    annotations: _PodlockKeys | None
    labels: _PodlockKeys | None


class _PodSecurity(TypedDict, total=False):
    runAsUser: Any
    runAsNonRoot: Any
    seccompProfile: _Profile | None
    appArmorProfile: _Profile | None
    seLinuxOptions: _Profile | None
    windowsOptions: _Profile | None


class _Spec(TypedDict, total=False):
    """A pod spec, or a workload's spec that holds one (see podspecs.POD_SPEC_PATHS)."""

    containers: list[_Container]
    initContainers: list[_Container]
    ephemeralContainers: list[_Container]
    volumes: list[_Volume]
    securityContext: _PodSecurity | None
    os: _Named | None
    hostPID: Any
    hostIPC: Any
    hostNetwork: Any
    shareProcessNamespace: Any
    template: _Template
    jobTemplate: _JobTemplate


class _Template(TypedDict, total=False):
    metadata: _Metadata
    spec: _Spec


class _JobTemplate(TypedDict, total=False):
    spec: _Spec


class _Object(TypedDict, total=False):
    """Any kind's object; `container` and `command` are PodExecOptions' (a CONNECT)."""

    metadata: _Metadata
    spec: _Spec
    container: Any
    command: Any


class _Kind(TypedDict, total=False):
    kind: Any


class _Resource(TypedDict, total=False):
    resource: Any


class _Request(TypedDict, total=False):
    uid: Any
    operation: Any
    kind: _Kind
    resource: _Resource
    subResource: Any
    namespace: Any
    name: Any
    object: _Object | None
    oldObject: _Object | None


class _Review(TypedDict, total=False):
    apiVersion: Any
    kind: Any
    request: _Request


_DECODER = msgspec.json.Decoder(_Review)
_WHOLE = msgspec.json.Decoder()  # the full parse, with the same numbers as the projection


def decode_review(raw: bytes) -> Any:
    """The body as JSON, reduced to what podlock reads when it has the expected shape.

    Raises orjson.JSONDecodeError, which names the line and column, when the body is not JSON.
    """
    # DecodeError includes ValidationError (an unexpected shape); msgspec raises RecursionError
    # on deep nesting and UnicodeDecodeError (a ValueError) on a bad byte in a string it builds.
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError, ValueError):
        pass
    try:
        return _WHOLE.decode(raw)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return orjson.loads(raw)
