#!/usr/bin/env python3
"""Build the project's container images without a Docker engine (root).

    hack/build-images.py [--import SOCKET] [name ...]
    hack/build-images.py --pin

Names: pause busybox operator sidecar demo-nginx demo-node demo-go reloader (default: all).
operator and sidecar are the repository's Dockerfile built with buildah, on a Debian base
bootstrapped here (mmdebstrap) and pinned by digest in the Dockerfile; --pin writes the
digest of this machine's bootstrap into the Dockerfile (after Debian updated a package of
the base). The test-only images are OCI layouts written by hand. Everything is cached
under ~/.cache/refreshbus: an unchanged tree rebuilds nothing. With --import, each image is
imported into containerd's k8s.io namespace at SOCKET (``ctr images import``). See
tests/testenv/refreshbus_testenv/images.py and buildah.py, and docs/images.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "testenv"))

from refreshbus_testenv import buildah, images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", choices=[*images.IMAGES, []], help="images to build (default: all)"
    )
    parser.add_argument("--import", dest="socket", help="containerd socket to import the images into")
    parser.add_argument("--pin", action="store_true", help="pin the Dockerfile's base to this bootstrap")
    args = parser.parse_args()
    if args.pin:
        print(buildah.pin_base())
        return 0
    started = time.monotonic()
    built = images.build(args.names or None)
    for ref, tarball in built.items():
        print(f"{ref}\t{tarball}\t{tarball.stat().st_size / 1e6:.1f} MB")
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
