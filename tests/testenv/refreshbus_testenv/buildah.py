"""The operator and sidecar images, built from the repository's Dockerfile with buildah.

No daemon and no registry: buildah (Debian's package) with the vfs storage driver and
chroot isolation, as root, storage under ``~/.cache/refreshbus/buildah``. The Dockerfile's
base is bootstrapped here from the Debian mirror apt uses (:func:`python_base`):
``mmdebstrap --variant=extract`` of Debian's python3.11 with its libraries and the CA
certificates, no shell, no package manager, then committed with a fixed timestamp, so the
same packages always give the same digest: the one the Dockerfile pins (:func:`pin_base`).

Each image is exported as a docker-archive tarball for ``ctr images import``, cached by a
hash of everything the build reads (Dockerfile, lock files, sources, base digest): an
unchanged tree costs one hash of the sources and no buildah call at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from refreshbus_testenv.binaries import ROOT, cache_dir
from refreshbus_testenv.images import _debian_mirror
from refreshbus_testenv.node import ensure_debian_packages
from refreshbus_testenv.procs import InfraError

DOCKERFILE = ROOT / "Dockerfile"
BASE_REPOSITORY = "localhost/refreshbus/python-base"
CACHE_REPOSITORY = "localhost/refreshbus/build-cache"
#: The base: Debian's interpreter and what it links, venv (the build stages make
#: virtualenvs with it), CA certificates (amqps to a managed broker). Nothing else.
BASE_PACKAGES = ["python3.11-minimal", "libpython3.11-stdlib", "python3.11-venv", "ca-certificates"]
BASE_SUITE = "bookworm"
#: Never needed in a container that runs Python (docs, locales, glibc's iconv modules:
#: Python's codecs are its own).
BASE_TRIM = [
    "usr/share/doc",
    "usr/share/doc-base",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/polkit-1",
    "usr/share/pixmaps",
    "usr/share/menu",
    "usr/lib/x86_64-linux-gnu/gconv",
    "var/cache",
    "var/log",
    "var/lib/apt",
]
#: What the build reads from the context (the same list as .dockerignore lets through).
CONTEXT = ["Dockerfile", "pyproject.toml", "README.md", "requirements", "operator", "sidecar"]
COMPONENTS = ("operator", "sidecar")
_PIN = re.compile(rf"^ARG BASE_IMAGE={re.escape(BASE_REPOSITORY)}@(sha256:[0-9a-f]{{64}})$", re.M)


def _log(msg: str) -> None:
    print(f"[buildah] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], timeout: float = 3600) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise InfraError(
            f"{' '.join(argv[:6])} ... failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def buildah(*args: str, timeout: float = 3600) -> str:
    """buildah on the project's own storage (vfs: no overlay or fuse needed)."""
    return _run(
        [
            "buildah",
            f"--root={cache_dir() / 'buildah' / 'storage'}",
            "--runroot=/run/refreshbus-buildah",
            "--storage-driver=vfs",
            *args,
        ],
        timeout=timeout,
    )


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One build at a time on this machine (the storage and the archives are shared)."""
    path = cache_dir() / "buildah.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _digest(ref: str) -> str | None:
    try:
        return buildah("images", "--format", "{{.Digest}}", ref).strip() or None
    except InfraError:
        return None


def python_base() -> str:
    """The Dockerfile's base, by digest (``localhost/refreshbus/python-base@sha256:...``),
    bootstrapped the first time on a machine (about a minute with the .deb cache warm)."""
    key = hashlib.sha256(
        f"{BASE_SUITE}:{','.join(BASE_PACKAGES)}:{','.join(BASE_TRIM)}:v1".encode()
    ).hexdigest()[:12]
    tag = f"{BASE_REPOSITORY}:{BASE_SUITE}-{key}"
    digest = _digest(tag)
    if digest is None:
        ensure_debian_packages({"buildah": "/usr/bin/buildah", "mmdebstrap": "/usr/bin/mmdebstrap"})
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            tarball = Path(tmp) / "rootfs.tar"
            _bootstrap(Path(tmp) / "rootfs", tarball)
            container = buildah("from", "scratch").strip()
            try:
                buildah("add", "--quiet", container, str(tarball), "/")
                buildah(
                    "config",
                    "--env=PATH=/usr/bin:/bin",
                    "--env=LANG=C.UTF-8",
                    "--label=org.opencontainers.image.description="
                    f"Debian {BASE_SUITE}: {' '.join(BASE_PACKAGES)}",
                    container,
                )
                # Epoch 0 everywhere: the digest depends on the files alone.
                buildah("commit", "--quiet", "--timestamp=0", container, tag)
            finally:
                buildah("rm", container)
        digest = _digest(tag)
        assert digest, tag
        _log(f"base {tag} {digest} bootstrapped in {time.monotonic() - started:.0f}s")
    return f"{BASE_REPOSITORY}@{digest}"


def _bootstrap(rootfs: Path, tarball: Path) -> None:
    """mmdebstrap extract (no maintainer scripts run: there is no shell to run them), then
    by hand the little those scripts would do that a container needs."""
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=extract",
            f"--include={','.join(BASE_PACKAGES)}",
            # Reuse and refill the .deb cache: a second machine bootstrap downloads nothing.
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives'
            f' && cp {debs}/*.deb "$1"/var/cache/apt/archives/ 2>/dev/null || true',
            f'--extract-hook=cp -n "$1"/var/cache/apt/archives/*.deb {debs}/ 2>/dev/null || true',
            BASE_SUITE,
            str(rootfs),
            _debian_mirror(),
        ],
        timeout=1800,
    )
    for sub in BASE_TRIM:
        shutil.rmtree(rootfs / sub, ignore_errors=True)
    if not (rootfs / "usr/bin/python3").is_symlink():
        (rootfs / "usr/bin/python3").symlink_to("python3.11")
    # What update-ca-certificates would write: every Mozilla certificate, in order.
    certs = sorted((rootfs / "usr/share/ca-certificates/mozilla").glob("*.crt"))
    (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(b"".join(c.read_bytes() for c in certs))
    (rootfs / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/usr/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin\n"
    )
    (rootfs / "etc/group").write_text("root:x:0:\nnonroot:x:65532:\n")
    (rootfs / "home/nonroot").mkdir(parents=True, exist_ok=True)
    os.chown(rootfs / "home/nonroot", 65532, 65532)
    (rootfs / "tmp").chmod(0o1777)
    # The standard library's bytecode (python3.11-minimal's postinst would have compiled it):
    # without it every start of a read-only container compiles what it imports, again.
    _run(
        [
            "chroot",
            str(rootfs),
            "/usr/bin/python3.11",
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            "-x",
            "/(test|tests|idlelib|tkinter|turtledemo|lib2to3)/",
            "/usr/lib/python3.11",
        ]
    )
    # Device nodes: the runtime makes /dev.
    for entry in (rootfs / "dev").iterdir():
        entry.unlink() if not entry.is_dir() or entry.is_symlink() else shutil.rmtree(entry)
    _run(
        [
            "tar",
            "--sort=name",
            "--numeric-owner",
            "--mtime=@0",
            "--clamp-mtime",
            "--xattrs",
            "-C",
            str(rootfs),
            "-cf",
            str(tarball),
            ".",
        ]
    )


def pinned_base() -> str:
    """The base digest the Dockerfile pins."""
    match = _PIN.search(DOCKERFILE.read_text())
    if match is None:
        raise InfraError(f"{DOCKERFILE}: no 'ARG BASE_IMAGE={BASE_REPOSITORY}@sha256:...' line")
    return f"{BASE_REPOSITORY}@{match.group(1)}"


def pin_base() -> str:
    """Bootstrap the base and write its digest into the Dockerfile (after a Debian update)."""
    with _locked():
        base = python_base()
    text = DOCKERFILE.read_text()
    DOCKERFILE.write_text(_PIN.sub(f"ARG BASE_IMAGE={base}", text))
    return base


def _prune() -> None:
    """Drop untagged images nothing builds on any more (what earlier builds of other
    sources left): vfs stores every step as a full copy, gigabytes after a few changes."""
    for _ in range(100):
        if not buildah("rmi", "--prune").strip():
            return


def _context_hash(base: str, component: str) -> str:
    digest = hashlib.sha256(f"{base}\n{component}\n".encode())
    for top in CONTEXT:
        path = ROOT / top
        for f in sorted([path] if path.is_file() else path.rglob("*")):
            skipped = {"__pycache__", ".mypy_cache"} & set(f.parts) or ".egg-info" in str(f)
            if f.is_file() and not skipped:
                digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def archive_dir() -> Path:
    path = cache_dir() / "images" / "oci"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(component: str, ref: str) -> Path:
    """``ref`` (e.g. docker.io/refreshbus/sidecar:dev) built from the Dockerfile's
    ``component`` target, as a docker-archive tarball; cached by content."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r} (one of {', '.join(COMPONENTS)})")
    with _locked():
        base = python_base()
        pinned = pinned_base()
        if base != pinned:
            # Debian updated a package of the base since the pin: build on what this
            # machine bootstrapped, and say how to move the pin.
            _log(f"the Dockerfile pins {pinned}, this machine's bootstrap is {base}: `make images-pin`")
        out = archive_dir() / f"{component}-{_context_hash(base, component)}.tar"
        if out.exists():
            return out
        started = time.monotonic()
        pip_cache = cache_dir() / "pip"
        pip_cache.mkdir(parents=True, exist_ok=True)
        volumes = [f"--volume={pip_cache}:/root/.cache/pip"]
        # The host's pip settings (index, proxy CA) for the build stages' pip; never in a layer.
        for host_file in ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt"):
            if Path(host_file).exists():
                volumes.append(f"--volume={host_file}:{host_file}:ro")
        common = [
            "build",
            "--quiet",
            "--isolation=chroot",
            "--pull=never",
            "--layers",
            *volumes,
            f"--build-arg=BASE_IMAGE={base}",
            f"--build-arg=COMPONENT={component}",
            f"--file={DOCKERFILE}",
        ]
        # The dependency stage under a tag of its own: the prune below keeps it (and the
        # layers under it) as the cache of the next build after a code change.
        buildah(*common, "--target=env", f"--tag={CACHE_REPOSITORY}:{component}", str(ROOT))
        buildah(*common, f"--target={component}", f"--tag={ref}", str(ROOT))
        for stale in archive_dir().glob(f"{component}-*.tar"):
            stale.unlink()
        tmp = out.with_suffix(".tmp")
        buildah("push", "--quiet", ref, f"docker-archive:{tmp}:{ref}")
        tmp.rename(out)
        _prune()
        _log(f"{ref} built from the Dockerfile in {time.monotonic() - started:.0f}s")
        return out
