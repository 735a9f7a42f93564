"""A real single-node Kubernetes cluster on this machine, without Docker: kind's job, done
with host processes.

:class:`ControlPlane` gives etcd + kube-apiserver; :class:`Node` adds what makes pods run
for real:

- ``kube-controller-manager`` (service accounts, ``kube-root-ca.crt``, ReplicaSets, GC, ...),
  ``kube-scheduler`` and ``kube-proxy`` (iptables mode: the ``kubernetes`` Service for
  in-cluster clients and the webhook Service the API server calls), all built from the
  Go module proxy at the control plane's version (hack/build-k8s-binaries.sh);
- ``containerd`` + ``runc`` + the CNI plugins from Debian's packages, with a CRI config for
  containerd 1.6 (cgroupfs on cgroup v1) and a locally built pause image (nothing can be
  pulled: images are imported with ``ctr images import``; pods use
  ``imagePullPolicy: Never``);
- a ``kubelet`` (cgroupfs driver, cgroup v1 allowed, swap allowed, relaxed eviction
  thresholds, webhook authn/authz against the API server, a client certificate from the
  control plane's CA, ``clusterDNS``/``clusterDomain`` pointing at CoreDNS);
- the add-ons kind has (refreshbus_testenv.addons): CoreDNS as kubeadm deploys it, and
  rancher's local-path-provisioner with the default StorageClass ``standard``.

Networking: the "node address" is an address of its own (``NODE_IP``, default 10.88.0.1)
on an otherwise empty host bridge, so it exists on every machine whatever its real
interfaces are. The API server and the test broker listen on it; pods (10.244.0.0/24 on
the ``rbcni0`` bridge) reach it through their gateway, i.e. the host. Nothing leaves the
machine. Everything started here is stopped by :meth:`Node.stop` — kubelet, the pods'
containers (through runc), the shims, containerd, mounts, network namespaces, bridges
and kube-proxy's iptables rules — and :meth:`Node.cleanup_leftovers` also runs at start,
so a crashed run never poisons the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from refreshbus_testenv import addons, certs
from refreshbus_testenv.binaries import ensure_binaries
from refreshbus_testenv.controlplane import ControlPlane
from refreshbus_testenv.procs import InfraError, free_port, spawn, stop_group, tail, wait_until

NODE_IP = os.environ.get("REFRESHBUS_NODE_IP", "10.88.0.1")
NODE_NAME = "refreshbus-node"
HOST_BRIDGE = "rbhost0"  # carries NODE_IP (a bridge with no ports works as a dummy device)
CNI_BRIDGE = "rbcni0"
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
#: Fixed runtime state (sockets, runc state) so that leftovers of a crashed run are found.
RUN_DIR = Path("/run/refreshbus-node")
RUNC_ROOT = RUN_DIR / "runc"
CNI_BIN = Path("/usr/lib/cni")
PAUSE_IMAGE = "docker.io/refreshbus/pause:dev"

DEBIAN_PACKAGES = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack",
}
NODE_COMPONENTS = ["kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"]
#: The kubelet timings shortened for tests (defaults: 1m, 20s, 10s). ``syncFrequency`` bounds
#: how late a ConfigMap volume is updated.
SHORT_KUBELET_TIMINGS = {
    "syncFrequency": "10s",
    "fileCheckFrequency": "10s",
    "nodeStatusUpdateFrequency": "5s",
}


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise InfraError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ensure_debian_packages(packages: Mapping[str, str] = DEBIAN_PACKAGES) -> None:
    """Install ``packages`` (name -> a file it installs; default: containerd, runc, CNI
    plugins, iptables, conntrack) from Debian if missing."""
    missing = [pkg for pkg, path in packages.items() if not Path(path).exists()]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _mounts_under(prefixes: list[Path]) -> list[str]:
    """Mount points below any of ``prefixes``, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if any(mountpoint == str(p) or mountpoint.startswith(f"{p}/") for p in prefixes):
            found.append(mountpoint)
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def _kill_processes(match: str) -> None:
    """SIGKILL processes whose command line contains ``match`` (our shims only)."""
    me = os.getpid()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        pid = int(cmdline.parent.name)
        if pid != me and any(match.encode() in a for a in args):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Node:
    """One worker node (this machine) for ``plane``. Call :meth:`configure` before the
    control plane starts (it needs the node's addresses and kubelet-client flags), then
    :meth:`start`; :meth:`stop` removes every trace."""

    workdir: Path
    plane: ControlPlane
    name: str = NODE_NAME
    ip: str = NODE_IP
    kubelet_port: int = field(default_factory=free_port)
    pids: dict[str, int] = field(default_factory=dict)
    #: Leave the kubelet's timings at their defaults (syncFrequency 1m, the ConfigMap
    #: change detection strategy Watch, ...): what users get, for measuring kubelet
    #: propagation of ConfigMap volumes (bench/vs_peers_bench.py). Otherwise the pod sync
    #: period and friends are shortened to 10 s/5 s so that tests need not wait minutes.
    kubelet_defaults: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)

    # -- paths -------------------------------------------------------------------------

    @property
    def containerd_socket(self) -> Path:
        return RUN_DIR / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return self.workdir / "containerd"

    @property
    def kubelet_root(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.workdir / "cni" / "net.d"

    @property
    def cni_data_dir(self) -> Path:
        return RUN_DIR / "cni-ipam"

    @property
    def pki(self) -> Path:
        return self.plane.pki

    # -- lifecycle ---------------------------------------------------------------------

    def configure(self) -> None:
        """Prepare the host (packages, binaries, node address, PKI) and point the control
        plane at the node address. Call before ``plane.start()``."""
        if os.geteuid() != 0:
            raise InfraError("a real node needs root (containerd, kubelet, iptables, mounts)")
        ensure_debian_packages()
        ensure_binaries(NODE_COMPONENTS)
        probe = ["ctr", f"--address={self.containerd_socket}", "version"]
        if self.containerd_socket.exists() and _run(*probe, check=False, timeout=10).returncode == 0:
            raise InfraError(
                "a refreshbus node already runs on this machine (one at a time: it owns the host "
                "bridges and containerd); stop it first, e.g. `make cluster-down-node`"
            )
        self.cleanup_leftovers()
        self._host_network()
        self.plane.address = self.ip
        p = self.pki
        certs.make_ca(p)
        certs.make_cert(
            p, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", client=True
        )
        self.plane.extra_args += [
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-node-port-range=30000-32767",
        ]

    def start(self, timeout: float = 180.0) -> None:
        """Start containerd, the controllers, kube-proxy and the kubelet; wait for Ready."""
        bins = ensure_binaries(NODE_COMPONENTS)
        self.workdir.mkdir(parents=True, exist_ok=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with (RUN_DIR / "workdirs").open("a") as f:
            f.write(f"{self.workdir}\n")
        self._node_pki()
        self._start_containerd(timeout)
        self.import_pause_image()

        kcm_conf = self._kubeconfig("kube-controller-manager", "/CN=system:kube-controller-manager")
        kcm = spawn(
            [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={kcm_conf}",
                f"--authentication-kubeconfig={kcm_conf}",
                f"--authorization-kubeconfig={kcm_conf}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--cluster-signing-cert-file={self.pki / 'ca.crt'}",
                f"--cluster-signing-key-file={self.pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--v=1",
            ],
            self.workdir / "kube-controller-manager.log",
        )
        self.pids["kube-controller-manager"] = kcm.pid

        sched_conf = self._kubeconfig("kube-scheduler", "/CN=system:kube-scheduler")
        sched = spawn(
            [
                str(bins / "kube-scheduler"),
                f"--kubeconfig={sched_conf}",
                f"--authentication-kubeconfig={sched_conf}",
                f"--authorization-kubeconfig={sched_conf}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=1",
            ],
            self.workdir / "kube-scheduler.log",
        )
        self.pids["kube-scheduler"] = sched.pid

        proxy_conf = self._kube_proxy_config()
        proxy = spawn(
            [str(bins / "kube-proxy"), f"--config={proxy_conf}", "--v=1"], self.workdir / "kube-proxy.log"
        )
        self.pids["kube-proxy"] = proxy.pid

        kubelet = spawn(
            [
                str(bins / "kubelet"),
                f"--config={self._kubelet_config()}",
                f"--kubeconfig={self._kubeconfig('kubelet', f'/O=system:nodes/CN=system:node:{self.name}')}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.workdir / 'kubelet-certs'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.ip}",
                "--v=1",
            ],
            self.workdir / "kubelet.log",
        )
        self.pids["kubelet"] = kubelet.pid
        wait_until(
            self._node_ready, timeout, "kubelet (node Ready)", kubelet, self.workdir / "kubelet.log", 1.0
        )
        wait_until(
            self._default_sa,
            timeout,
            "kube-controller-manager (default ServiceAccount)",
            kcm,
            self.workdir / "kube-controller-manager.log",
            0.5,
        )
        addons.install(self, timeout)

    def stop(self) -> None:
        """Stop everything started here and remove pods' containers, mounts and networks."""
        for name in ("kubelet", "kube-scheduler", "kube-controller-manager"):
            pid = self.pids.pop(name, None)
            if pid is not None:
                stop_group(pid, timeout=10)
        self._remove_containers()
        pid = self.pids.pop("containerd", None)
        if pid is not None:
            stop_group(pid, timeout=10)
        pid = self.pids.pop("kube-proxy", None)
        if pid is not None:
            stop_group(pid, timeout=5)
        self.cleanup_leftovers()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- images --------------------------------------------------------------------------

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run("ctr", f"--address={self.containerd_socket}", "-n", "k8s.io", *args, timeout=timeout)

    def import_image(self, tarball: Path) -> None:
        """Import an image tarball (OCI layout or docker-archive, naming its image) into k8s.io."""
        self.ctr("images", "import", "--no-unpack", str(tarball))

    def images(self) -> list[str]:
        return self.ctr("images", "ls", "-q").stdout.split()

    def import_pause_image(self) -> None:
        from refreshbus_testenv import images

        if PAUSE_IMAGE not in self.images():
            self.import_image(images.build_pause())

    # -- cleanup -------------------------------------------------------------------------

    def _remove_containers(self) -> None:
        """Kill and delete every runc container of this node (pods' processes included)."""
        if not RUNC_ROOT.exists():
            return
        for state in RUNC_ROOT.glob("*/*/state.json"):
            cid, root = state.parent.name, state.parent.parent
            _run("runc", f"--root={root}", "kill", cid, "KILL", check=False, timeout=20)
        for state in RUNC_ROOT.glob("*/*/state.json"):
            cid, root = state.parent.name, state.parent.parent
            _run("runc", f"--root={root}", "delete", "--force", cid, check=False, timeout=20)

    def cleanup_leftovers(self) -> None:
        """Idempotent: containers, shims, mounts, netns, bridges, iptables rules, cgroups
        that this class (in this run or a crashed earlier one) may have left behind."""
        self._remove_containers()
        _kill_processes(str(self.containerd_socket))  # shims (and a stray containerd)
        workdirs = [self.workdir]
        with contextlib.suppress(OSError):
            workdirs += [Path(w) for w in (RUN_DIR / "workdirs").read_text().split()]
        netns = [p for p in Path("/run/netns").glob("cni-*")] if Path("/run/netns").exists() else []
        for mountpoint in _mounts_under([RUN_DIR, *workdirs, *netns]):
            _run("umount", "-l", mountpoint, check=False)
        for ns in netns:
            with contextlib.suppress(OSError):
                ns.unlink()
        for dev in (CNI_BRIDGE, HOST_BRIDGE):
            _run("ip", "link", "del", dev, check=False)
        kube_proxy = ensure_binaries(["kube-proxy"]) / "kube-proxy"
        _run(str(kube_proxy), "--cleanup", check=False, timeout=60)
        for controller in Path("/sys/fs/cgroup").iterdir():
            for sub in ("kubepods", "kubepods.slice"):
                top = controller / sub
                if top.is_dir():
                    for d in sorted(top.rglob("*"), key=lambda x: len(x.parts), reverse=True):
                        if d.is_dir():
                            with contextlib.suppress(OSError):
                                d.rmdir()
                    with contextlib.suppress(OSError):
                        top.rmdir()
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        (RUN_DIR / "workdirs").write_text("")

    # -- internals -----------------------------------------------------------------------

    def _host_network(self) -> None:
        _run("ip", "link", "add", HOST_BRIDGE, "type", "bridge", check=False)
        _run("ip", "addr", "replace", f"{self.ip}/32", "dev", HOST_BRIDGE)
        _run("ip", "link", "set", HOST_BRIDGE, "up")
        for key, value in (
            ("net/ipv4/ip_forward", "1"),
            ("net/bridge/bridge-nf-call-iptables", "1"),
            ("net/bridge/bridge-nf-call-ip6tables", "1"),
        ):
            with contextlib.suppress(OSError):
                Path("/proc/sys", key).write_text(value)

    def _node_pki(self) -> None:
        p = self.pki
        certs.make_cert(
            p,
            "kubelet-serving",
            f"/CN={self.name}",
            sans=[f"IP:{self.ip}", f"DNS:{self.name}", "IP:127.0.0.1"],
        )

    def _kubeconfig(self, name: str, subject: str) -> Path:
        certs.make_cert(self.pki, name, subject, client=True)
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {
                                "server": self.plane.server,
                                "certificate-authority": str(self.pki / "ca.crt"),
                            },
                        }
                    ],
                    "users": [
                        {
                            "name": name,
                            "user": {
                                "client-certificate": str(self.pki / f"{name}.crt"),
                                "client-key": str(self.pki / f"{name}.key"),
                            },
                        }
                    ],
                    "contexts": [{"name": "local", "context": {"cluster": "local", "user": name}}],
                    "current-context": "local",
                },
                indent=2,
            )
        )
        return path

    def _start_containerd(self, timeout: float) -> None:
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (self.cni_conf_dir / "10-refreshbus.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "refreshbus",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": CNI_BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.cni_data_dir),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )
        config = self.workdir / "containerd.toml"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config.write_text(f"""\
# containerd 1.6 (Debian 12): config version 2.
version = 2
root = "{self.containerd_root}"
state = "{RUN_DIR / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.workdir / "opt"}"

[{cri}]
  # Built locally and imported (hack/build-images.py): nothing can be pulled here.
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  disable_apparmor = true
  # Clamp negative OOM scores (kubelet asks -998 for sandboxes, -997 for Guaranteed pods)
  # to containerd's own: these machines deny CAP_SYS_RESOURCE even to root, so lowering
  # oom_score_adj fails in runc ("failed to update /proc/self/oom_score_adj").
  restrict_oom_score_adj = true
  max_container_log_line_size = 16384

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  discard_unpacked_layers = false

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "/usr/sbin/runc"
  Root = "{RUNC_ROOT}"
  # cgroup v1 with the cgroupfs driver (no systemd here); matches kubelet's cgroupDriver.
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{self.cni_conf_dir}"
  max_conf_num = 1
""")
        proc = spawn(
            ["containerd", f"--config={config}", "--log-level=warn"], self.workdir / "containerd.log"
        )
        self.pids["containerd"] = proc.pid
        wait_until(
            lambda: (
                self.containerd_socket.exists()
                and _run("ctr", f"--address={self.containerd_socket}", "version", check=False).returncode == 0
            ),
            timeout,
            "containerd",
            proc,
            self.workdir / "containerd.log",
            0.2,
        )

    def _kubelet_config(self) -> Path:
        path = self.workdir / "kubelet-config.json"
        p = self.pki
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": self.ip,
                    "port": self.kubelet_port,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": free_port(),
                    "tlsCertFile": str(p / "kubelet-serving.crt"),
                    "tlsPrivateKeyFile": str(p / "kubelet-serving.key"),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(p / "ca.crt")},
                    },
                    "authorization": {"mode": "Webhook"},
                    "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
                    "cgroupDriver": "cgroupfs",
                    # These machines run cgroup v1: accepted up to kubelet 1.34 with this set.
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    "clusterDNS": [addons.CLUSTER_DNS_IP],
                    "clusterDomain": addons.CLUSTER_DOMAIN,
                    "resolvConf": "/etc/resolv.conf",
                    "podCIDR": POD_CIDR,
                    "maxPods": 110,
                    "serializeImagePulls": False,
                    # A shared dev box: evict only when really out of resources.
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                        "imagefs.available": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "protectKernelDefaults": False,
                    "makeIPTablesUtilChains": False,
                    "localStorageCapacityIsolation": True,
                    "shutdownGracePeriod": "0s",
                    **({} if self.kubelet_defaults else SHORT_KUBELET_TIMINGS),
                    "registerNode": True,
                },
                indent=2,
            )
        )
        return path

    def _kube_proxy_config(self) -> Path:
        kubeconfig = self._kubeconfig("kube-proxy", "/CN=system:kube-proxy")
        path = self.workdir / "kube-proxy-config.json"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(kubeconfig)},
                    "mode": "iptables",
                    "clusterCIDR": CLUSTER_CIDR,
                    "hostnameOverride": self.name,
                    "bindAddress": self.ip,
                    "healthzBindAddress": f"127.0.0.1:{free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    # Leave the host's conntrack sysctls alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                    "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
                    "nodePortAddresses": [f"{self.ip}/32"],
                },
                indent=2,
            )
        )
        return path

    def _node_ready(self) -> bool:
        proc = self.plane.kubectl(
            "get",
            "node",
            self.name,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return proc.stdout.strip() == "True"

    def _default_sa(self) -> bool:
        return (
            self.plane.kubectl("-n", "default", "get", "serviceaccount", "default", check=False).returncode
            == 0
        )

    def logs_tail(self) -> str:
        return "\n".join(
            tail(self.workdir / f"{n}.log")
            for n in ("kubelet", "containerd", "kube-controller-manager", "kube-scheduler", "kube-proxy")
        )


def start_cluster(
    workdir: Path, api_port: int | None = None, crds: bool = False, kubelet_defaults: bool = False
) -> tuple[ControlPlane, Node]:
    """Control plane + node, ready for pods. Stops what it started if anything fails.
    The CRDs are left to ``helm install`` unless ``crds`` (Helm refuses to adopt them).
    ``kubelet_defaults``: see :attr:`Node.kubelet_defaults`."""
    workdir = Path(workdir)
    plane = ControlPlane(workdir / "k8s", **({"api_port": api_port} if api_port else {}))
    node = Node(workdir / "node", plane, kubelet_defaults=kubelet_defaults)
    try:
        node.configure()
        plane.start()
        if crds:
            plane.apply_crds()
        node.start()
    except BaseException:
        node.stop()
        plane.stop()
        raise
    return plane, node


def wait_for(condition: object, timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll a zero-argument callable until it returns truthy (for tests)."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
