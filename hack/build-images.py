#!/usr/bin/env python3
"""Build the project's container images without a Docker engine (OCI layouts by hand).

    hack/build-images.py [--import SOCKET] [name ...]

Names: pause busybox operator sidecar demo-nginx demo-node demo-go reloader (default: all).
Layers are cached under ~/.cache/refreshbus/images: the first build on a machine runs
debootstrap (minutes); afterwards a code change only rebuilds the project's wheel layer.
With --import, each image is imported into containerd's k8s.io namespace at SOCKET
(``ctr images import``). See tests/testenv/refreshbus_testenv/images.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "testenv"))

from refreshbus_testenv import images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", choices=[*images.IMAGES, []], help="images to build (default: all)"
    )
    parser.add_argument("--import", dest="socket", help="containerd socket to import the images into")
    args = parser.parse_args()
    started = time.monotonic()
    built = images.build(args.names or None)
    for ref, tarball in built.items():
        print(f"{ref}\t{tarball}")
        if args.socket:
            subprocess.run(
                [
                    "ctr",
                    f"--address={args.socket}",
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    "--no-unpack",
                    str(tarball),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    print(f"built {len(built)} image(s) in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
