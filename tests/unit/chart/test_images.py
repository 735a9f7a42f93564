"""The Dockerfile, read as a document: one file for both images (a target each), a base
pinned by digest, dependencies from hash-locked files in their own layer, no compilers,
nothing of the build in the final images, non-root numeric user, read-only-root friendly,
OCI labels, and entrypoints that are the console scripts pyproject.toml installs. The chart
must point at the same images. (The e2e node suite builds and runs them: refreshbus_testenv.buildah.)
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMAGES = {"operator": "refreshbus-operator", "sidecar": "refreshbus-sidecar"}
OCI_LABELS = ("title", "description", "version", "revision", "source", "licenses", "url", "documentation")
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|rustc|cargo|python3?-dev|libc6?-dev)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def chain(self, name: str) -> list[Stage]:
        """``name`` and the stages it is built FROM, bottom first."""
        stage = self.stage(name)
        names = {s.name for s in self.stages}
        return [*self.chain(stage.base), stage] if stage.base in names else [stage]

    def resolve(self, value: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), m.group(0)), value)


def parse(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in logical:
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif keyword == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            if keyword == "ARG":  # stage-level build argument: its default, for resolve()
                key, _, default = rest.partition("=")
                args.setdefault(key, default)
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(args, stages)


def labels(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for args in stage.all("LABEL"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            out[key] = value
    return out


def env(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for args in stage.all("ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            out[key] = value
    return out


DF = parse(REPO / "Dockerfile")
STAGE_NAMES = {s.name for s in DF.stages}
PIN = re.compile(r"localhost/refreshbus/python-base@sha256:[0-9a-f]{64}")


def instructions(target: str, keyword: str) -> list[str]:
    return [a for stage in DF.chain(target) for a in stage.all(keyword)]


def test_one_file_two_targets_on_a_base_pinned_by_digest() -> None:
    assert not (REPO / "operator" / "Dockerfile").exists()
    assert not (REPO / "sidecar" / "Dockerfile").exists()
    assert set(IMAGES) <= STAGE_NAMES
    assert PIN.fullmatch(DF.args["BASE_IMAGE"]), DF.args["BASE_IMAGE"]
    for stage in DF.stages:
        assert stage.base in STAGE_NAMES or stage.base == "${BASE_IMAGE}", stage.base
    # The pin is what the build script reads and `make images-pin` rewrites.
    from refreshbus_testenv import buildah

    assert buildah.pinned_base() == DF.args["BASE_IMAGE"]


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_final_images_carry_nothing_of_the_build(target: str) -> None:
    """From the bare base, the virtualenv copied in: no pip, no build backend, no compiler."""
    final = DF.chain(target)
    assert final[0].base == "${BASE_IMAGE}"
    assert not [a for stage in final for a in stage.all("RUN")]
    assert not [a for stage in final for a in stage.all("ADD")]
    copies = [a for stage in final for a in stage.all("COPY")]
    assert copies == ["--from=env /opt/refreshbus/ /opt/refreshbus/"]


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_entrypoint_is_the_console_script_run_as_a_numeric_non_root_user(target: str) -> None:
    script = IMAGES[target]
    assert script in PYPROJECT["project"]["scripts"]
    (entrypoint,) = DF.stage(target).all("ENTRYPOINT")
    assert json.loads(entrypoint) == [script]  # exec form: the process is PID 1 and gets SIGTERM
    users = instructions(target, "USER")
    assert users, "final image must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "numeric USER (runAsNonRoot can only verify a number)"
    assert (uid, gid) == ("65532", "65532")  # what the chart's securityContext says


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_read_only_root_friendly(target: str) -> None:
    environment = {k: v for stage in DF.chain(target) for k, v in env(stage).items()}
    assert environment["PYTHONDONTWRITEBYTECODE"] == "1"
    assert environment["PYTHONUNBUFFERED"] == "1"
    assert environment["PATH"].startswith("/opt/refreshbus/bin:")
    assert instructions(target, "WORKDIR") == ["/tmp"]  # the one writable place (an emptyDir)
    assert not instructions(target, "VOLUME")
    # Bytecode is compiled at build time, never at run time.
    assert any("compileall" in r for r in DF.stage("env").all("RUN"))


def test_every_run_is_exec_form_and_pip_takes_only_hashed_binary_wheels() -> None:
    """The base has no shell; no compiler is ever needed or present."""
    for stage in DF.stages:
        for run in stage.all("RUN"):
            argv = json.loads(run)
            assert not COMPILERS.search(" ".join(argv)), run
            assert "apt-get" not in argv, run
            if "install" in argv and "-r" in argv:
                assert {"--require-hashes", "--only-binary=:all:"} <= set(argv), run


def test_dependencies_come_from_the_lock_before_the_code() -> None:
    """The dependency layer depends on the lock file alone: it survives every code change."""
    env_stage = DF.stage("env")
    kinds = [(kw, a) for kw, a in env_stage.instructions if kw in ("COPY", "RUN")]
    lock = kinds.index(("COPY", "requirements/${COMPONENT}.txt /tmp/requirements.txt"))
    wheel = kinds.index(("COPY", "--from=wheel /dist/ /tmp/dist/"))
    install = next(i for i, (kw, a) in enumerate(kinds) if kw == "RUN" and "/tmp/requirements.txt" in a)
    assert lock < install < wheel
    project = next(json.loads(a) for kw, a in kinds[wheel:] if kw == "RUN" and "refreshbus" in a)
    assert {"--no-deps", "--no-index"} <= set(project)
    assert "requirements/build.txt /tmp/build.txt" in DF.stage("tools").all("COPY")


def _lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """requirements/<name>.txt: package -> (pinned version, hashes)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    text = (REPO / "requirements" / f"{name}.txt").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        package, _, version = spec.partition("==")
        assert version, f"{name}.txt: {spec} is not pinned"
        pins[package.lower().replace("_", "-")] = (version, [o for o in options if o.startswith("--hash=")])
    return pins


@pytest.mark.parametrize("extra", sorted(IMAGES))
def test_lock_files_pin_every_requirement_of_pyproject_within_its_bounds_with_hashes(extra: str) -> None:
    """requirements/*.txt are generated from pyproject.toml (`make lock`); a bound changed in
    pyproject without regenerating them fails here."""
    pins = _lock(extra)
    for line in PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"][extra]:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} missing from requirements/{extra}.txt: run `make lock`"
        assert req.specifier.contains(pins[name][0]), f"{req.name}=={pins[name][0]} outside {req.specifier}"
    assert all(hashes for _, hashes in pins.values())
    build = _lock("build")
    for line in PYPROJECT["build-system"]["requires"]:
        req = Requirement(line)
        assert req.specifier.contains(build[req.name.lower()][0]), line


@pytest.mark.parametrize("target", sorted(IMAGES))
def test_oci_labels(target: str) -> None:
    found = {k: v for stage in DF.chain(target) for k, v in labels(stage).items()}
    for label in OCI_LABELS:
        assert found.get(f"org.opencontainers.image.{label}"), label
    assert found["org.opencontainers.image.title"] == "refreshbus-${COMPONENT}"
    assert found["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    assert DF.resolve(found["org.opencontainers.image.version"]) == PYPROJECT["project"]["version"]


def test_build_context_is_what_dockerignore_lets_through() -> None:
    allowed = {"pyproject.toml", "README.md", "requirements/", "operator/", "sidecar/"}
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[[line.strip() for line in ignore].index("*")] == "*"
    assert {line[1:] for line in ignore if line.startswith("!")} == allowed
    from refreshbus_testenv import buildah

    # What the build cache hashes is what the build reads.
    assert {c.rstrip("/") for c in allowed} | {"Dockerfile"} == set(buildah.CONTEXT)
    for stage in DF.stages:
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            for source in args.split()[:-1]:
                assert source.replace("${COMPONENT}", "sidecar").split("/")[0] + (
                    "/" if "/" in source else ""
                ) in allowed, source


def test_the_chart_defaults_to_these_images() -> None:
    values = yaml.safe_load((REPO / "charts" / "refreshbus" / "values.yaml").read_text())
    chart = yaml.safe_load((REPO / "charts" / "refreshbus" / "Chart.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"]
    assert values["operator"]["image"]["repository"].endswith("/operator")
    assert values["sidecar"]["image"]["repository"].endswith("/sidecar")
    from refreshbus_operator.injection.config import InjectionConfig

    assert (
        InjectionConfig().sidecar_image == f"{values['sidecar']['image']['repository']}:{chart['appVersion']}"
    )
