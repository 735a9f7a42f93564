"""``python -m refreshbus_testenv up|down|status|env``: the local control plane and broker
for manual use (``make cluster-up`` / ``make cluster-down``). The pytest fixtures use the
same :class:`ControlPlane` and :class:`Broker` classes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from refreshbus_testenv.broker import Broker
from refreshbus_testenv.controlplane import ROOT, ControlPlane
from refreshbus_testenv.procs import InfraError, port_open, stop_group

DEFAULT_DIR = ROOT / ".cluster"
DEFAULT_API_PORT = 16443
DEFAULT_AMQP_PORT = 5673


def _state_file(workdir: Path) -> Path:
    return workdir / "state.json"


def up(workdir: Path, with_node: bool = False, api_port: int = DEFAULT_API_PORT,
       amqp_port: int = DEFAULT_AMQP_PORT) -> int:
    """Start etcd, kube-apiserver and RabbitMQ in the background, install the CRDs.
    With ``with_node``: also a real node (node.py) with the project's images imported."""
    state_path = _state_file(workdir)
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if port_open(state["api_port"], state.get("api_host", "127.0.0.1")) and port_open(
            state["amqp_port"], state.get("amqp_host", "127.0.0.1")
        ):
            print(f"already running (state in {state_path})")
            _print_env(workdir, state)
            return 0
    workdir.mkdir(parents=True, exist_ok=True)
    if with_node:
        return _up_node(workdir)
    plane = ControlPlane(workdir / "k8s", api_port=api_port)
    broker = Broker(workdir / "rabbitmq", port=amqp_port)
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(plane.start), pool.submit(broker.start)]
        for job in jobs:
            job.result()
    plane.apply_crds()
    state = {
        "pids": {**plane.pids, "rabbitmq": broker.pid},
        "api_port": plane.api_port,
        "amqp_port": broker.port,
        "kubeconfig": plane.kubeconfig,
        "amqp_url": broker.url(),
        "rabbitmq_node": broker.node,
    }
    state_path.write_text(json.dumps(state, indent=2))
    print("local control plane and broker are up")
    _print_env(workdir, state)
    return 0


def down(workdir: Path) -> int:
    """Stop whatever ``up`` started and delete its state."""
    state_path = _state_file(workdir)
    if not state_path.exists():
        print("nothing to stop")
        return 0
    state = json.loads(state_path.read_text())
    if "node" in state:
        from refreshbus_testenv.node import Node

        node = Node(Path(state["node"]["workdir"]), ControlPlane(workdir / "k8s"),
                    pids=dict(state["node"]["pids"]))
        node.stop()
    for name in ("kube-apiserver", "etcd", "rabbitmq"):
        pid = state["pids"].get(name)
        if pid:
            stop_group(pid)
    state_path.unlink()
    print("stopped")
    return 0


def status(workdir: Path) -> int:
    state_path = _state_file(workdir)
    if not state_path.exists():
        print("not running")
        return 1
    state = json.loads(state_path.read_text())
    api = port_open(state["api_port"], state.get("api_host", "127.0.0.1"))
    amqp = port_open(state["amqp_port"], state.get("amqp_host", "127.0.0.1"))
    print(f"kube-apiserver :{state['api_port']} {'up' if api else 'DOWN'}")
    print(f"rabbitmq       :{state['amqp_port']} {'up' if amqp else 'DOWN'}")
    return 0 if api and amqp else 1


def _up_node(workdir: Path) -> int:
    from refreshbus_testenv import images
    from refreshbus_testenv.node import NODE_IP, start_cluster

    started = time.monotonic()
    built = images.build()
    print(f"images built in {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    # Its own port (and so Erlang node name): it may run next to `up`'s loopback broker.
    broker = Broker(workdir / "rabbitmq", port=DEFAULT_AMQP_PORT + 1, host=NODE_IP)
    plane, node = start_cluster(workdir, api_port=DEFAULT_API_PORT)
    broker.start()
    for tarball in built.values():
        node.import_image(tarball)
    print(f"cluster with a real node up in {time.monotonic() - started:.1f}s")
    state = {
        "pids": {**plane.pids, "rabbitmq": broker.pid},
        "api_port": plane.api_port,
        "api_host": plane.address,
        "amqp_port": broker.port,
        "amqp_host": broker.host,
        "kubeconfig": plane.kubeconfig,
        "amqp_url": broker.url(),
        "rabbitmq_node": broker.node,
        "node": {"workdir": str(node.workdir), "pids": node.pids, "name": node.name, "ip": node.ip},
    }
    _state_file(workdir).write_text(json.dumps(state, indent=2))
    print("local cluster (control plane + real node) and broker are up; images imported:")
    print("  " + " ".join(r.removeprefix("docker.io/") for r in built))
    _print_env(workdir, state)
    print("  install the chart (CRDs included):")
    print("  helm install refreshbus charts/refreshbus -n refreshbus-system --create-namespace \\")
    print("    --set operator.image.repository=refreshbus/operator,operator.image.tag=dev \\")
    print("    --set sidecar.image.repository=refreshbus/sidecar,sidecar.image.tag=dev \\")
    print("    --set operator.image.pullPolicy=Never,sidecar.image.pullPolicy=Never \\")
    print("    --set broker.existingSecret=...,broker.existingSidecarSecret=...  (URLs: the broker above)")
    return 0


def _print_env(workdir: Path, state: dict[str, object]) -> None:
    print(f"\n  export KUBECONFIG={state['kubeconfig']}")
    print(f"  export REFRESHBUS_BROKER_URLS={state['amqp_url']}")
    print("\n  kubectl get configrefreshes -A\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refreshbus_testenv",
        description="Run a local Kubernetes control plane (etcd + kube-apiserver, built from "
        "source on first use) and a RabbitMQ node on loopback, for development.",
    )
    parser.add_argument("command", choices=["up", "down", "status"], help="what to do")
    parser.add_argument("--node", action="store_true",
                        help="up: also run a real node (kubelet, containerd, scheduler, controller "
                        "manager, kube-proxy; needs root) and import the project's images")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=f"where state, data and logs live (default: {DEFAULT_DIR})")
    parser.add_argument("--api-port", type=int, default=DEFAULT_API_PORT,
                        help=f"up: kube-apiserver port (default: {DEFAULT_API_PORT})")
    parser.add_argument("--amqp-port", type=int, default=DEFAULT_AMQP_PORT,
                        help=f"up: RabbitMQ AMQP port (default: {DEFAULT_AMQP_PORT})")
    args = parser.parse_args(argv)
    args.dir = args.dir.resolve()  # kubeconfigs name files by path: relative ones would break
    try:
        if args.command == "up":
            return up(args.dir, with_node=args.node, api_port=args.api_port, amqp_port=args.amqp_port)
        return {"down": down, "status": status}[args.command](args.dir)
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
