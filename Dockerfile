# The upscaling service (python -m service) with the shipped models baked in. No torch in either flavour.
#
#   docker build -t upscaler:gpu .                         # CUDA 13 + cuDNN 9 runtime, onnxruntime-gpu (default)
#   docker build -t upscaler:cpu --build-arg FLAVOR=cpu .  # slim Python base, onnxruntime (CPU)
#
# Written for BuildKit and the legacy builder alike (no RUN --mount, no heredocs): the legacy builder runs every
# stage, so a build that replaces the base images (deploy/docker-smoke.sh) sets both GPU_BASE and CPU_BASE.
# Where PyPI is not reachable from the build, PIP_INDEX_URL / PIP_FIND_LINKS / PIP_NO_INDEX point pip at a mirror.

# onnxruntime-gpu 1.31.1 is built for CUDA 13 and cuDNN 9: the base must carry the same majors.
ARG GPU_BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG CPU_BASE=python:3.12.12-slim-bookworm
ARG FLAVOR=gpu

FROM ${GPU_BASE} AS base-gpu
FROM ${CPU_BASE} AS base-cpu

# hadolint ignore=DL3006
FROM base-${FLAVOR} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
SHELL ["/bin/sh", "-eu", "-c"]
# The CUDA image has no Python: take the distribution's (3.12 on Ubuntu 24.04). The slim Python image has its own.
# Not version-pinned: the base image tag pins the distribution release, and its archive drops superseded versions.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi

FROM base AS build
ARG FLAVOR
# pip reads these from the environment. A build without PyPI points them at a mirror (deploy/docker-smoke.sh
# serves wheels downloaded on the host from 127.0.0.1 and builds with --network host).
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_FIND_LINKS=
ARG PIP_NO_INDEX=0
ARG PIP_TRUSTED_HOST=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY deploy/docker/requirements-common.txt deploy/docker/requirements-${FLAVOR}.txt /tmp/requirements/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements/requirements-${FLAVOR}.txt \
 && /opt/venv/bin/python -c "import onnxruntime, fastapi, uvicorn, PIL, numpy" \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

# gcc for the service's compiled parts (service/runtime/csrc/fsrcnn.c, the CPU kernels; service/imageio/csrc/, the
# PNG deflater and the PNG reader's unfilter), which setup.py builds; it stays out of the runtime image. Where no
# compiler can be had, the image still serves, with ONNX Runtime running every model, ISA-L deflating PNGs and
# Pillow reading them.
# hadolint ignore=DL3008
RUN if ! command -v cc >/dev/null; then \
        (apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*) \
        || echo "no C compiler could be installed"; \
    fi

# The package, installed as pip install . installs it anywhere: the service with its compiled parts, and the shipped
# models with their cards as package data of export/ (whose scripts need torch and are never run here).
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY service/ service/
COPY export/ export/
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
 && /opt/venv/bin/pip uninstall -y pip setuptools \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib
# Compiled above: the root filesystem may be read-only at run time (Kubernetes readOnlyRootFilesystem).

FROM base AS runtime
# A fixed numeric id, so Kubernetes can check runAsNonRoot and volumes can be chowned to it.
RUN groupadd --system --gid 10001 upscaler \
 && useradd --system --uid 10001 --gid upscaler --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin upscaler
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/bin/upscaler-healthcheck
# No source tree here: python -m service imports the installed package.
WORKDIR /
ENV PATH=/opt/venv/bin:$PATH \
    UPSCALER_HOST=0.0.0.0 \
    UPSCALER_PORT=8000
USER 10001:10001
EXPOSE 8000
# Ready, not merely alive: load balancers (Traefik in docker-compose.yml) route only to healthy containers.
# start-period covers loading and warming up the models (cuDNN's exhaustive search on a GPU).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "/usr/local/bin/upscaler-healthcheck"]
# uvicorn runs in-process (service/__main__.py) as PID 1 through the exec form, so SIGTERM reaches it directly:
# /readyz turns 503 for UPSCALER_DRAIN_SECONDS, then in-flight requests finish and it exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/venv/bin/python", "-m", "service"]
