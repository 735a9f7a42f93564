"""``refreshbus-operator cleanup``: remove what the operator made, when its release goes.

``helm uninstall`` deletes what the chart rendered, not what the operator created at run
time. The chart's post-delete hook Job (charts/refreshbus/templates/cleanup-hook.yaml) runs
this command with the operator image to remove those objects too:

* the copies of the sidecars' broker Secret in every namespace that had injected pods
  (sidecar_rbac.ensure_broker_secret): credentials of a broker that goes with the release;
* every workload's sidecar Role and RoleBinding (sidecar_rbac): grants made for a sidecar
  that can no longer do anything (no broker, no operator); the workload and its pods stay;
* the self-managed webhook TLS Secret in the release namespace (its CA's private key).

It keeps the release records (issue 13; ConfigMaps owned by their workload, no credentials,
no grants), as every ConfigRefresh is kept with the CRD.

Why a post-delete hook and not owner references: the sidecar Roles are owned by their
workload, and the garbage collector deletes a dependent only once ALL its owners are gone, so
a second owner from the release could never make them go with whichever goes first. Why
post-delete and not pre-delete: by then the operator Deployment and the webhook are being
deleted, so nothing recreates what this deletes (the command first waits for the operator's
pods to end); a running operator could copy the Secret again into a namespace where a
workload appears during the uninstall.

Least privilege: the broker Secret copies are read (metadata only) and deleted by name --
the hook's role grants ``get``/``delete`` on that one name, never ``list`` on Secrets -- and
only if they carry the operator's label, with a UID precondition, so a user's Secret of the
same name is never touched.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from refreshbus_operator.kube import ApiError, ConfigError, Kube, q
from refreshbus_operator.sidecar_rbac import MANAGED_BY, RBAC

log = logging.getLogger("refreshbus.uninstall")

#: The sidecar Roles/RoleBindings (sidecar_rbac.MANAGED_BY, as a selector).
SIDECAR_RBAC_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
#: What the webhook's TLS Secret carries (injection.webhook.ensure_tls).
TLS_LABELS = {"app.kubernetes.io/name": "refreshbus", "app.kubernetes.io/component": "sidecar-injector"}


@dataclass
class Removed:
    broker_secrets: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    role_bindings: list[str] = field(default_factory=list)
    tls_secret: str | None = None

    def summary(self) -> str:
        return (
            f"removed {len(self.broker_secrets)} broker Secret copies, {len(self.roles)} sidecar Roles, "
            f"{len(self.role_bindings)} sidecar RoleBindings"
            + (f", the webhook TLS Secret {self.tls_secret}" if self.tls_secret else "")
        )


async def _delete_if(kube: Kube, path: str, labels: dict[str, str]) -> bool:
    """Delete the object at ``path`` if it exists and carries ``labels``; True if deleted."""
    try:
        meta = (await kube.aget_metadata(path)).get("metadata") or {}
    except ApiError as exc:
        if exc.not_found:
            return False
        raise
    have = meta.get("labels") or {}
    if any(have.get(k) != v for k, v in labels.items()):
        log.info("kept %s: not made by the operator (labels %s)", path, have)
        return False
    try:
        await kube.arequest("DELETE", path, body={"preconditions": {"uid": meta["uid"]}})
    except ApiError as exc:
        if exc.not_found or exc.conflict:  # gone meanwhile, or replaced by another object
            return False
        raise
    return True


async def _wait_for_operator(kube: Kube, namespace: str, selector: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        listed = await kube.aget(f"/api/v1/namespaces/{q(namespace)}/pods", labelSelector=selector)
        running = [p["metadata"]["name"] for p in listed.get("items") or []]
        if not running:
            return
        if time.monotonic() > deadline:
            log.warning("operator pods still there after %.0f s (%s); cleaning up anyway",
                        timeout, ", ".join(running))  # fmt: skip
            return
        await asyncio.sleep(1.0)


async def cleanup(
    kube: Kube,
    release_namespace: str,
    broker_secret: str,
    tls_secret: str | None = None,
    operator_selector: str | None = None,
    wait: float = 60.0,
) -> Removed:
    """Remove the operator-made objects of the release in ``release_namespace`` (see the module)."""
    if operator_selector:
        await _wait_for_operator(kube, release_namespace, operator_selector, wait)
    removed = Removed()
    namespaces = await kube.aget("/api/v1/namespaces")
    for item in namespaces.get("items") or []:
        namespace = item["metadata"]["name"]
        if namespace == release_namespace:  # the chart's own Secret: Helm deletes it
            continue
        path = f"/api/v1/namespaces/{q(namespace)}/secrets/{q(broker_secret)}"
        if await _delete_if(kube, path, {MANAGED_BY_KEY: MANAGED_BY[MANAGED_BY_KEY]}):
            removed.broker_secrets.append(f"{namespace}/{broker_secret}")
    for plural, names in (("rolebindings", removed.role_bindings), ("roles", removed.roles)):
        listed = await kube.aget(f"{RBAC}/{plural}", labelSelector=SIDECAR_RBAC_SELECTOR)
        for item in listed.get("items") or []:
            meta = item["metadata"]
            path = f"{RBAC}/namespaces/{q(meta['namespace'])}/{plural}/{q(meta['name'])}"
            if await _delete_if(kube, path, MANAGED_BY):
                names.append(f"{meta['namespace']}/{meta['name']}")
    if tls_secret:
        path = f"/api/v1/namespaces/{q(release_namespace)}/secrets/{q(tls_secret)}"
        if await _delete_if(kube, path, TLS_LABELS):
            removed.tls_secret = f"{release_namespace}/{tls_secret}"
    return removed


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refreshbus-operator cleanup",
        description="Remove what the operator created at run time (broker Secret copies, sidecar "
        "Roles/RoleBindings, the webhook TLS Secret). Run by the chart's post-delete hook.",
    )
    p.add_argument("--release-namespace", required=True, help="the namespace the operator ran in")
    p.add_argument("--broker-secret", required=True, help="name of the sidecars' broker Secret copies")
    p.add_argument("--tls-secret", help="the self-managed webhook TLS Secret (in the release namespace)")
    p.add_argument(
        "--operator-selector",
        help="label selector of the operator's pods: wait until they are gone before deleting",
    )
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the operator's pods to go (default 60)")  # fmt: skip
    return p


async def _run(args: argparse.Namespace) -> Removed:
    kube = Kube()
    try:
        return await cleanup(kube, args.release_namespace, args.broker_secret, args.tls_secret,
                             args.operator_selector, args.wait)  # fmt: skip
    finally:
        await kube.aclose()


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        removed = asyncio.run(_run(args))
    except (ApiError, ConfigError, OSError) as exc:
        print(f"refreshbus-operator cleanup: {exc}", file=sys.stderr)
        return 1
    for kind, names in (("broker Secret", removed.broker_secrets), ("Role", removed.roles),
                        ("RoleBinding", removed.role_bindings)):  # fmt: skip
        for name in names:
            log.info("deleted %s %s", kind, name)
    print(removed.summary())
    return 0
