"""Container images without a Docker engine: the operator and the sidecar from the
repository's Dockerfile (buildah, see refreshbus_testenv.buildah); the test-only images
(demo apps, pause, busybox) as OCI image layouts written by hand.

An image here is a list of layers (uncompressed tar files, cached by content) plus an
OCI config and manifest; :func:`write_oci_tarball` packs them as an OCI image-layout tar
whose index names the image (``io.containerd.image.name``), which is what
``ctr -n k8s.io images import`` takes. No registry is involved anywhere: pods use
``imagePullPolicy: Never``.

Layers, from the bottom (each cached under ``~/.cache/refreshbus/images``):

1. **base** — a Debian bookworm root filesystem from ``debootstrap --variant=minbase`` with
   Debian's python3 (3.11), nginx-light and nodejs: one shared layer for the demo apps, so
   containerd stores and unpacks it once (built once per machine, a few minutes);
2. the app's own files (a config, a script, a static Go binary).

Images built (see :data:`IMAGES` and hack/build-images.py): ``refreshbus/operator:dev``,
``refreshbus/sidecar:dev``, demo apps ``refreshbus/demo-nginx:dev``,
``refreshbus/demo-node:dev``, ``refreshbus/demo-go:dev``, plus ``refreshbus/pause:dev``
(the CRI sandbox image), ``refreshbus/busybox:dev`` (Debian's busybox-static) and
``refreshbus/reloader:dev`` (stakater/Reloader, hack/build-reloader.sh).

The test node's cluster add-ons (refreshbus_testenv.addons) get images too:
``refreshbus/coredns:dev`` and ``refreshbus/local-path-provisioner:dev`` (their pinned Go
builds, hack/build-cluster-addons.sh) and ``refreshbus/rabbitmq:dev``, Debian's
``rabbitmq-server`` on a minbase root filesystem of its own (the chart's embedded broker).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from refreshbus_testenv.binaries import ROOT, cache_dir, ensure_addon
from refreshbus_testenv.procs import InfraError

SUITE = "bookworm"
BASE_PACKAGES = ["python3", "nginx-light", "nodejs"]
NONROOT = "65532:65532"
APPS_DIR = ROOT / "tests" / "e2e" / "node" / "apps"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"

PAUSE_GO = """\
// pause: the pod sandbox's first process. Sleeps, reaps zombies (shared PID namespace),
// exits on SIGINT/SIGTERM. Built locally because no image can be pulled here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
"""


def images_cache() -> Path:
    path = cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], **kwargs: object) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise InfraError(
            f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tar and its digest (which is also its diff_id)."""

    path: Path
    digest: str
    size: int

    @classmethod
    def from_tar(cls, path: Path) -> Layer:
        sidecar = path.with_suffix(path.suffix + ".sha256")
        stat = path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        if sidecar.exists():
            stored_stamp, _, digest = sidecar.read_text().partition(" ")
            if stored_stamp == stamp:
                return cls(path, digest.strip(), stat.st_size)
        digest = "sha256:" + _sha256_file(path)
        sidecar.write_text(f"{stamp} {digest}\n")
        return cls(path, digest, stat.st_size)

    @classmethod
    def from_dir(cls, directory: Path, out: Path, exclude: Iterable[str] = ()) -> Layer:
        """Tar ``directory`` (owners numeric, names sorted) into ``out``."""
        tmp = out.with_suffix(".tmp")
        _run(
            [
                "tar",
                "--numeric-owner",
                "--sort=name",
                "--xattrs",
                "-C",
                str(directory),
                *[f"--exclude={e}" for e in exclude],
                "-cf",
                str(tmp),
                ".",
            ]
        )
        tmp.rename(out)
        return cls.from_tar(out)


def write_oci_tarball(
    name: str, layers: list[Layer], config: dict[str, object], out: Path, labels: dict[str, str] | None = None
) -> Path:
    """An OCI image-layout tarball for ``name`` (e.g. ``docker.io/refreshbus/sidecar:dev``)."""
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            **config,
            "Labels": {
                "org.opencontainers.image.title": name.rsplit("/", 1)[-1].split(":")[0],
                "org.opencontainers.image.source": "refreshbus (hack/build-images.py)",
                **(labels or {}),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [{"created_by": f"refreshbus layer {layer.path.name}"} for layer in layers],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size} for layer in layers
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:

        def add_bytes(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes("index.json", json.dumps(index).encode())
        add_bytes(f"blobs/sha256/{config_digest[7:]}", config_bytes)
        add_bytes(f"blobs/sha256/{manifest_digest[7:]}", manifest_bytes)
        seen = set()
        for layer in layers:
            if layer.digest not in seen:
                seen.add(layer.digest)
                tar.add(layer.path, arcname=f"blobs/sha256/{layer.digest[7:]}")
    tmp.rename(out)
    return out


# -- layers ----------------------------------------------------------------------------


def _debian_mirror() -> str:
    """The Debian mirror apt already uses on this machine (deb822 or one-line sources)."""
    candidates = [*Path("/etc/apt/sources.list.d").glob("*.sources"), Path("/etc/apt/sources.list")]
    for path in candidates:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                line = line.strip()
                if line.startswith("URIs:") and "security" not in line:
                    return line.split()[1]
                if line.startswith("deb ") and "security" not in line:
                    return next(w for w in line.split() if "://" in w)
    raise InfraError("no Debian mirror found in /etc/apt sources")


def base_layer() -> Layer:
    """The shared Debian base layer (debootstrap minbase + python3, nginx-light, nodejs)."""
    cache = images_cache()
    key = hashlib.sha256(f"{SUITE}:{','.join(BASE_PACKAGES)}:v2".encode()).hexdigest()[:12]
    out = cache / f"base-{key}.tar"
    if out.exists():
        return Layer.from_tar(out)
    rootfs = cache / f"rootfs-{key}"
    if not (rootfs / "usr/bin/python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        _debootstrap(rootfs, BASE_PACKAGES)
    # Trim what a container never needs; make /tmp and the non-root user's home usable.
    _trim(rootfs)
    with (rootfs / "etc/passwd").open("a") as f:
        f.write("nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin\n")
    with (rootfs / "etc/group").open("a") as f:
        f.write("nonroot:x:65532:\n")
    (rootfs / "home/nonroot").mkdir(parents=True, exist_ok=True)
    os.chown(rootfs / "home/nonroot", 65532, 65532)
    # nginx as non-root: its pid/temp paths under /tmp (the demo config sets them too).
    return Layer.from_dir(rootfs, out, exclude=["./proc/*", "./sys/*", "./run/*", "./tmp/*"])


#: RabbitMQ's runtime dependencies (Debian's rabbitmq-server Depends: minus adduser,
#: logrotate, socat, python3 and lsb-base, which only its maintainer scripts and init
#: integration use).
RABBITMQ_ERLANG = [
    "erlang-base", "erlang-crypto", "erlang-eldap", "erlang-inets", "erlang-mnesia", "erlang-os-mon",
    "erlang-parsetools", "erlang-public-key", "erlang-runtime-tools", "erlang-ssl",
    "erlang-syntax-tools", "erlang-tools", "erlang-xmerl",
]  # fmt: skip
#: uid/gid of ``rabbitmq`` in the official image, which the chart's security context uses.
RABBITMQ_UID = 999


def _debootstrap(rootfs: Path, packages: list[str]) -> None:
    if shutil.which("debootstrap") is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"], check=True
        )
    started = time.monotonic()
    _log(f"debootstrap {SUITE} minbase + {' '.join(packages)} (first build on this machine)")
    cache = images_cache()
    (cache / "debs").mkdir(exist_ok=True)
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={cache / 'debs'}",
            f"--include={','.join(packages)}",
            SUITE,
            str(rootfs),
            _debian_mirror(),
        ]
    )
    _log(f"debootstrap took {time.monotonic() - started:.0f}s")


def _trim(rootfs: Path) -> None:
    """Remove what a container never needs (docs, apt caches, device nodes)."""
    for sub in (
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/log",
    ):
        shutil.rmtree(rootfs / sub, ignore_errors=True)
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    for device in (rootfs / "dev").glob("*"):
        with contextlib.suppress(OSError):
            shutil.rmtree(device) if device.is_dir() and not device.is_symlink() else device.unlink()


def rabbitmq_layer() -> Layer:
    """Debian's rabbitmq-server on its own minbase root filesystem (one layer).

    Erlang comes from debootstrap; rabbitmq-server itself is unpacked (its data tar)
    rather than installed, because its maintainer scripts would create a system user
    with a machine-dependent uid and try to start the service inside the build chroot."""
    version = subprocess.run(
        ["apt-cache", "policy", "rabbitmq-server"], capture_output=True, text=True, check=False
    ).stdout
    candidate = next((ln.split()[1] for ln in version.splitlines() if "Candidate:" in ln), "")
    if not candidate or candidate == "(none)":
        raise InfraError("Debian's rabbitmq-server is not available from apt (run `apt-get update`)")
    key = hashlib.sha256(f"{SUITE}:{','.join(RABBITMQ_ERLANG)}:{candidate}:v2".encode()).hexdigest()[:12]
    cache = images_cache()
    out = cache / f"rabbitmq-{key}.tar"
    if out.exists():
        return Layer.from_tar(out)
    rootfs = cache / f"rootfs-rabbitmq-{key}"
    shutil.rmtree(rootfs, ignore_errors=True)
    _debootstrap(rootfs, RABBITMQ_ERLANG)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _run(["apt-get", "download", f"rabbitmq-server={candidate}"], cwd=tmp)
        deb = next(Path(tmp).glob("rabbitmq-server_*.deb"))
        # Not `dpkg-deb -x`: its tar would replace the merged-/usr symlinks (/lib -> usr/lib)
        # with directories for the package's /lib/systemd files, and the dynamic loader
        # would no longer be found.
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        _run(["tar", "-x", "--keep-directory-symlink", "-C", str(rootfs)], stdin=tar.stdout)
        if tar.wait() != 0:
            raise InfraError(f"dpkg-deb --fsys-tarfile {deb.name} failed")
    _trim(rootfs)
    with (rootfs / "etc/passwd").open("a") as f:
        f.write(f"rabbitmq:x:{RABBITMQ_UID}:{RABBITMQ_UID}:RabbitMQ:/var/lib/rabbitmq:/usr/sbin/nologin\n")
    with (rootfs / "etc/group").open("a") as f:
        f.write(f"rabbitmq:x:{RABBITMQ_UID}:\n")
    for sub in ("var/lib/rabbitmq", "etc/rabbitmq"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
        os.chown(rootfs / sub, RABBITMQ_UID, RABBITMQ_UID)
    layer = Layer.from_dir(rootfs, out, exclude=["./proc/*", "./sys/*", "./run/*", "./tmp/*"])
    shutil.rmtree(rootfs, ignore_errors=True)
    return layer


def _extras(source: Path = ROOT) -> dict[str, list[str]]:
    return dict(tomllib.loads((source / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def deps_layer(component: str, source: Path = ROOT) -> Layer:
    """Python dependencies of ``component`` (an extra of the distribution), cp311 wheels."""
    requirements = sorted(_extras(source)[component])
    key = hashlib.sha256(json.dumps(requirements).encode()).hexdigest()[:12]
    out = images_cache() / f"deps-{component}-{key}.tar"
    if out.exists():
        return Layer.from_tar(out)
    _log(f"pip install --target ({component}): {', '.join(requirements)}")
    with tempfile.TemporaryDirectory(dir=images_cache()) as tmp:
        target = Path(tmp) / "opt/refreshbus/deps"
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-compile",
                "--target",
                str(target),
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--platform",
                "manylinux_2_36_x86_64",
                "--platform",
                "manylinux2014_x86_64",
                "--platform",
                "linux_x86_64",
                *requirements,
            ]
        )
        shutil.rmtree(target / "bin", ignore_errors=True)
        _compile(Path(tmp))
        return Layer.from_dir(Path(tmp), out)


def _compile(root: Path) -> None:
    """Precompile .pyc (the image's root filesystem is read-only at run time)."""
    _run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            str(root),
        ]
    )


def project_wheel(source: Path = ROOT) -> Path:
    """The project's wheel (``pip wheel --no-deps``) of the checkout ``source``, rebuilt only
    when its sources change."""
    digest = hashlib.sha256()
    for top in ("pyproject.toml", "operator", "sidecar"):
        for path in sorted([source / top] if (source / top).is_file() else (source / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(source)).encode() + path.read_bytes())
    wheels = images_cache() / "wheels" / digest.hexdigest()[:16]
    found = sorted(wheels.glob("refreshbus-*.whl"))
    if found:
        return found[0]
    if source == ROOT:  # keep one wheel of this checkout
        for stale in (images_cache() / "wheels").glob("*"):
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=images_cache()) as tmp:
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)]
        _run(pip_wheel, cwd=tmp)
    return next(wheels.glob("refreshbus-*.whl"))


def app_layer(component: str, console_script: str, module: str, source: Path = ROOT) -> Layer:
    """The project's wheel, installed (no deps) under /opt/refreshbus/app, + console script."""
    with tempfile.TemporaryDirectory(dir=images_cache()) as tmp:
        tmpdir = Path(tmp)
        wheel = project_wheel(source)
        root = tmpdir / "root"
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-compile",
                "--target",
                str(root / "opt/refreshbus/app"),
                str(wheel),
            ]
        )
        shutil.rmtree(root / "opt/refreshbus/app/bin", ignore_errors=True)
        _compile(root)
        script = root / "usr/local/bin" / console_script
        script.parent.mkdir(parents=True)
        script.write_text(f"#!/usr/bin/python3\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
        script.chmod(0o755)
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
        out = images_cache() / f"app-{component}-{digest.hexdigest()[:12]}.tar"
        if out.exists():
            return Layer.from_tar(out)
        if source == ROOT:  # another checkout's layer (e.g. the previous release's) stays
            for stale in images_cache().glob(f"app-{component}-*.tar*"):
                stale.unlink()
        return _tar_layer(root, out)


def _tar_layer(root: Path, out: Path) -> Layer:
    """Pack ``root`` into ``out`` reproducibly (sorted, owner 0, mtime 0): the same files
    always give the same digest, which is what makes the layer cache work."""
    _run(["tar", "--numeric-owner", "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
          "-C", str(root), "-cf", str(out), "."])
    return Layer.from_tar(out)


def _dir_layer(
    name: str, files: dict[str, tuple[bytes | Path, int]], symlinks: dict[str, str] | None = None
) -> Layer:
    """A small layer from in-memory files {path: (content or source file, mode)}."""
    with tempfile.TemporaryDirectory(dir=images_cache()) as tmp:
        root = Path(tmp)
        for rel, (content, mode) in files.items():
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(content.read_bytes() if isinstance(content, Path) else content)
            dest.chmod(mode)
        for rel, target in (symlinks or {}).items():
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(target)
        listing = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            listing.update(str(path.relative_to(root)).encode())
            if path.is_file() and not path.is_symlink():
                listing.update(path.read_bytes() + str(path.stat().st_mode).encode())
            elif path.is_symlink():
                listing.update(os.readlink(path).encode())
        out = images_cache() / f"{name}-{listing.hexdigest()[:12]}.tar"
        if out.exists():
            return Layer.from_tar(out)
        return _tar_layer(root, out)


def _go_build(source: str | Path, name: str) -> Path:
    """Build a static Go binary (the host's Go toolchain) from one file or a directory."""
    out = images_cache() / "bin" / name
    out.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        if isinstance(source, Path):
            for f in source.glob("*.go"):
                shutil.copy(f, src / f.name)
        else:
            (src / "main.go").write_text(source)
        (src / "go.mod").write_text(f"module refreshbus.local/{name}\n\ngo 1.22\n")
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
        _run(["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(out), "."], cwd=str(src), env=env)
    return out


# -- images ----------------------------------------------------------------------------


def ref(short: str, tag: str = "dev") -> str:
    """The image reference of one of :data:`IMAGES`."""
    return f"docker.io/refreshbus/{short}:{tag}"


def _out(short: str) -> Path:
    directory = images_cache() / "oci"
    directory.mkdir(exist_ok=True)
    return directory / f"{short}.tar"


def build_pause() -> Path:
    binary = _go_build(PAUSE_GO, "pause")
    layer = _dir_layer("pause", {"pause": (binary, 0o755)})
    return write_oci_tarball(
        ref("pause"), [layer], {"Entrypoint": ["/pause"], "User": "65535:65535"}, _out("pause")
    )


def build_busybox() -> Path:
    busybox = Path("/bin/busybox")
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "busybox-static"], capture_output=True, text=True, check=False
    ).stdout
    if "ok installed" not in installed:  # Debian's busybox (not -static) is dynamically linked
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "busybox-static"], check=True
        )
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    layer = _dir_layer(
        "busybox",
        {"bin/busybox": (busybox, 0o755), "tmp/.keep": (b"", 0o644)},
        {f"bin/{a}": "busybox" for a in applets if a != "busybox"},
    )
    return write_oci_tarball(ref("busybox"), [layer], {"Cmd": ["sh"], "Env": ["PATH=/bin"]}, _out("busybox"))


def build_reloader() -> Path:
    """stakater/Reloader (hack/build-reloader.sh; the peer of the vs-peers comparison): its
    static binary alone, as upstream's own image has it."""
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-reloader.sh")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise InfraError(f"hack/build-reloader.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    binary = Path(proc.stdout.strip().splitlines()[-1])
    layer = _dir_layer("reloader", {"reloader": (binary, 0o755)})
    return write_oci_tarball(
        ref("reloader"), [layer], {"Entrypoint": ["/reloader"], "User": "65534:65534"}, _out("reloader")
    )


def build_dockerfile_component(component: str) -> Path:
    """refreshbus/operator:dev or refreshbus/sidecar:dev: the repository's Dockerfile, built
    with buildah (refreshbus_testenv.buildah), so the suite runs the images users build."""
    from refreshbus_testenv import buildah  # it reuses this module's Debian mirror lookup

    return buildah.build(component, ref(component))

PY_ENV = [
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "PYTHONPATH=/opt/refreshbus/app:/opt/refreshbus/deps",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
    "HOME=/home/nonroot",
]


def build_python_component(component: str, source: Path = ROOT, tag: str = "dev") -> Path:
    """The operator or sidecar image of an earlier release's checkout ``source`` (which has no
    buildable Dockerfile: it predates the pinned base and lock files), tagged ``tag``, by the
    layer writer: Debian python3, deps in their own layer, the wheel on top, non-root,
    console script. Today's images come from the Dockerfile (:func:`build_dockerfile_component`)."""
    script = f"refreshbus-{component}"
    layers = [
        base_layer(),
        deps_layer(component, source),
        app_layer(component, script, f"refreshbus_{component}.__main__", source),
    ]
    return write_oci_tarball(
        ref(component, tag),
        layers,
        {
            "Entrypoint": [f"/usr/local/bin/{script}"],
            "User": NONROOT,
            "Env": PY_ENV,
            "WorkingDir": "/home/nonroot",
        },
        _out(component if tag == "dev" else f"{component}-{tag}"),
    )


def build_demo(app: str) -> Path:
    """Demo apps that read config from files and reload in place (see tests/e2e/node/apps)."""
    if app == "nginx":
        layer = _dir_layer(
            "demo-nginx",
            {"etc/nginx/nginx.conf": (APPS_DIR / "nginx.conf", 0o644), "srv/config/.keep": (b"", 0o644)},
        )
        config = {
            "Entrypoint": ["/usr/sbin/nginx", "-g", "daemon off;"],
            "User": NONROOT,
            "ExposedPorts": {"8080/tcp": {}},
        }
    elif app == "node":
        layer = _dir_layer("demo-node", {"app/server.js": (APPS_DIR / "server.js", 0o644)})
        config = {
            "Entrypoint": ["/usr/bin/node", "/app/server.js"],
            "User": NONROOT,
            "ExposedPorts": {"8080/tcp": {}},
        }
    elif app == "go":
        binary = _go_build(APPS_DIR / "goapp", "demo-go")
        layer = _dir_layer("demo-go", {"usr/local/bin/demo-go": (binary, 0o755)})
        config = {"Entrypoint": ["/usr/local/bin/demo-go"], "User": NONROOT, "ExposedPorts": {"8080/tcp": {}}}
    else:
        raise ValueError(f"unknown demo app {app!r}")
    return write_oci_tarball(ref(f"demo-{app}"), [base_layer(), layer], config, _out(f"demo-{app}"))


def build_rabbitmq() -> Path:
    """The embedded broker's image: the chart's default command and args run it as is
    (its entrypoint is rabbitmq-server itself, not Debian's wrapper that switches user)."""
    return write_oci_tarball(
        ref("rabbitmq"),
        [rabbitmq_layer()],
        {
            "Entrypoint": ["/usr/lib/rabbitmq/bin/rabbitmq-server"],
            "User": f"{RABBITMQ_UID}:{RABBITMQ_UID}",
            # rabbitmq-diagnostics (the chart's liveness probe) resolves through PATH.
            "Env": ["PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/var/lib/rabbitmq"],
            "ExposedPorts": {"5672/tcp": {}},
        },
        _out("rabbitmq"),
    )


def build_addon(name: str, entrypoint: list[str]) -> Path:
    """A static Go add-on binary alone in its image (CoreDNS, local-path-provisioner)."""
    binary = ensure_addon(name)
    layer = _dir_layer(name, {name: (binary, 0o755), "tmp/.keep": (b"", 0o644)})
    return write_oci_tarball(ref(name), [layer], {"Entrypoint": entrypoint}, _out(name))


#: Every image: name -> builder (the e2e suite imports all of them).
IMAGES = {
    "pause": build_pause,
    "busybox": build_busybox,
    "operator": lambda: build_dockerfile_component("operator"),
    "sidecar": lambda: build_dockerfile_component("sidecar"),
    "demo-nginx": lambda: build_demo("nginx"),
    "demo-node": lambda: build_demo("node"),
    "demo-go": lambda: build_demo("go"),
    "reloader": build_reloader,
    "rabbitmq": build_rabbitmq,
    "coredns": lambda: build_addon("coredns", ["/coredns"]),
    "local-path-provisioner": lambda: build_addon("local-path-provisioner", ["/local-path-provisioner"]),
}


def build(names: Iterable[str] | None = None) -> dict[str, Path]:
    """Build ``names`` (default: all); returns image ref -> OCI tarball."""
    result = {}
    for name in names or IMAGES:
        started = time.monotonic()
        result[ref(name)] = IMAGES[name]()
        _log(f"{ref(name)} in {time.monotonic() - started:.1f}s")
    return result
