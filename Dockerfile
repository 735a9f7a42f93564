# refreshbus images: the operator and the sidecar from this one file. Build context: the
# repository root; pick the image with a target and the matching COMPONENT:
#
#   make images     # buildah, no daemon, no registry: bootstraps the base below (docs/images.md)
#   buildah build --target sidecar  --build-arg COMPONENT=sidecar  -t ghcr.io/refreshbus/sidecar:0.1.0 .
#   buildah build --target operator --build-arg COMPONENT=operator -t ghcr.io/refreshbus/operator:0.1.0 .
#   (docker build takes the same flags; add --build-arg BASE_IMAGE=python:3.11-slim-bookworm@sha256:...
#   where the Debian-built base is not available)
#
# The base is Debian bookworm's own python3.11, bootstrapped by hack/build-images.py
# (mmdebstrap: only Python, its libraries and the CA certificates; no shell, no package
# manager) and pinned here by the digest of that reproducible bootstrap (`make images-pin`
# after Debian updates a package in it).
#
# Stages: `tools` (pip and the locked build backend), `wheel` (the project's wheel: the only
# stage a code change rebuilds besides the last COPY), `env` (a virtualenv at /opt/refreshbus
# with COMPONENT's locked dependencies, requirements/<COMPONENT>.txt, hashes required, binary
# wheels only: no compiler anywhere), then the final images, which copy that virtualenv onto
# the bare base: no pip, no build tools, no compiler. Every RUN is in exec form: the base has
# no shell. The images run as a numeric non-root user and write nothing outside /tmp, so they
# work with readOnlyRootFilesystem: true (the chart mounts an emptyDir at /tmp).
ARG BASE_IMAGE=localhost/refreshbus/python-base@sha256:537d57b3115ecdedd4dafab71b1b87011a3e83e511e6660a950f1dd338f4caab

FROM ${BASE_IMAGE} AS tools
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN ["python3.11", "-m", "venv", "/opt/tools"]
COPY requirements/build.txt /tmp/build.txt
RUN ["/opt/tools/bin/pip", "install", "--require-hashes", "--only-binary=:all:", "-r", "/tmp/build.txt"]

FROM tools AS wheel
COPY pyproject.toml README.md /src/
COPY operator/ /src/operator/
COPY sidecar/ /src/sidecar/
RUN ["/opt/tools/bin/pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", "/dist", "/src"]

FROM tools AS env
ARG COMPONENT
# The dependency layer depends on the lock file alone: it survives every code change.
COPY requirements/${COMPONENT}.txt /tmp/requirements.txt
RUN ["python3.11", "-m", "venv", "--without-pip", "/opt/refreshbus"]
RUN ["/opt/tools/bin/pip", "--python", "/opt/refreshbus/bin/python", "install", "--require-hashes", \
     "--only-binary=:all:", "--no-compile", "-r", "/tmp/requirements.txt"]
COPY --from=wheel /dist/ /tmp/dist/
RUN ["/opt/tools/bin/pip", "--python", "/opt/refreshbus/bin/python", "install", "--no-deps", \
     "--no-index", "--find-links", "/tmp/dist", "--no-compile", "refreshbus"]
# Bytecode now, as root: the root filesystem is read-only at run time. unchecked-hash: the
# files never change under an image, so nothing is stat-ed or re-read on import.
RUN ["/opt/refreshbus/bin/python", "-m", "compileall", "-q", "-j", "0", \
     "--invalidation-mode", "unchecked-hash", "/opt/refreshbus"]
# Fails the build if the lock lacks something COMPONENT imports.
RUN ["/opt/refreshbus/bin/python", "-c", \
     "import importlib, os; importlib.import_module('refreshbus_' + os.environ['COMPONENT'] + '.launch')"]

FROM ${BASE_IMAGE} AS runtime
ARG BASE_IMAGE
ARG COMPONENT
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="refreshbus-${COMPONENT}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/refreshbus/refreshbus" \
      org.opencontainers.image.url="https://github.com/refreshbus/refreshbus" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="refreshbus developers" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV PATH=/opt/refreshbus/bin:/usr/bin:/bin \
    HOME=/home/nonroot \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 65532:65532
# Last, so the metadata steps above work on the bare base (vfs copies whole trees per step).
COPY --from=env /opt/refreshbus/ /opt/refreshbus/

FROM runtime AS operator
LABEL org.opencontainers.image.description="refreshbus operator: ConfigRefresh in, targeted refresh events out over RabbitMQ, acks folded into status; sidecar injection webhook" \
      org.opencontainers.image.documentation="https://github.com/refreshbus/refreshbus/blob/main/docs/operator.md"
# Liveness (kopf), metrics, webhook (HTTPS).
EXPOSE 8080 9465 9443
ENTRYPOINT ["refreshbus-operator"]

FROM runtime AS sidecar
LABEL org.opencontainers.image.description="refreshbus sidecar: receives targeted refresh events, swaps config in atomically, reloads the unmodified app, acks" \
      org.opencontainers.image.documentation="https://github.com/refreshbus/refreshbus/blob/main/docs/injection.md"
# /readyz, /livez, /metrics.
EXPOSE 9464
ENTRYPOINT ["refreshbus-sidecar"]
CMD ["run"]
