"""``python -m refreshbus_operator.injection``: the injection webhook on its own.

The operator runs the same server in-process (handlers/injection.py); this entry point
serves it without the rest of the operator (a separate Deployment, or tests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from refreshbus_operator.injection import config as injection_config

DESCRIPTION = """\
Serve the refreshbus sidecar-injection webhook (AdmissionReview v1, POST /mutate-pods) over
HTTPS. At start and every --check-interval seconds it makes sure the TLS Secret
(CA + serving certificate for <service>.<namespace>.svc) exists and is not near expiry,
and patches the caBundle of the MutatingWebhookConfiguration.

Every setting is also an environment variable REFRESHBUS_INJECTION_<NAME> (e.g.
REFRESHBUS_INJECTION_SIDECAR_IMAGE); a flag wins. Kubernetes access: in-cluster service
account, else $KUBECONFIG.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m refreshbus_operator.injection",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", dest="webhook_host", help="bind address (default 0.0.0.0)")
    p.add_argument("--port", dest="webhook_port", type=int, help="HTTPS port (default 9443)")
    p.add_argument(
        "--namespace",
        dest="operator_namespace",
        help="the operator's namespace: TLS Secret home, never injected",
    )
    p.add_argument("--service", dest="service_name", help="Service in front of the webhook")
    p.add_argument("--webhook-configuration", help="MutatingWebhookConfiguration to keep the caBundle of")
    p.add_argument("--tls-secret", help="Secret holding the CA and serving certificate")
    p.add_argument("--cert-dir", help="where the serving certificate files are written")
    p.add_argument("--sidecar-image", help="image of the injected sidecar")
    p.add_argument(
        "--extra-name",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP for the serving certificate (repeatable), e.g. 127.0.0.1",
    )
    p.add_argument(
        "--check-interval",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how often certificate expiry and the caBundle are checked (default 3600)",
    )
    return p


async def _serve(
    server_config: injection_config.InjectionConfig, extra: Sequence[str], interval: float
) -> None:
    from refreshbus_operator.injection.webhook import WebhookServer
    from refreshbus_operator.kube import Kube

    kube = Kube()
    server = WebhookServer(kube, server_config, extra)
    try:
        await server.start(interval)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()
    finally:
        await kube.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = injection_config.from_env(
            webhook_host=args.webhook_host,
            webhook_port=args.webhook_port,
            operator_namespace=args.operator_namespace,
            service_name=args.service_name,
            webhook_configuration=args.webhook_configuration,
            tls_secret=args.tls_secret,
            cert_dir=args.cert_dir,
            sidecar_image=args.sidecar_image,
        )
    except ValueError as exc:
        print(f"refreshbus injection: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(cfg, args.extra_name, args.check_interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
