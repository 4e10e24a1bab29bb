# The upscaling service (python -m service) with the shipped models baked in. No torch in either flavour.
#
#   docker build -t upscaler:gpu .                         # onnxruntime-gpu with CUDA 13 + cuDNN 9 as wheels (default)
#   docker build -t upscaler:cpu --build-arg FLAVOR=cpu .  # onnxruntime (CPU)
#
# Both flavours are the same slim Python base; they differ only in their requirements file. The GPU flavour needs no
# CUDA base image: onnxruntime-gpu[cuda,cudnn] brings the CUDA runtime, cuBLAS, cuFFT, cuRAND, NVRTC and cuDNN as
# nvidia-* wheels, which the service preloads (service/runtime/onnxruntime_backend.py); the host gives only the
# driver (libcuda.so.1, mounted by the NVIDIA Container Toolkit). Without one the GPU image serves on the CPU and
# says why (a log line, and device_reason in /v1/models).
#
# Written for BuildKit and the legacy builder alike (no RUN --mount, no heredocs). A build without a registry
# (deploy/docker-smoke.sh) replaces BASE. Where PyPI is not reachable from the build, PIP_INDEX_URL / PIP_FIND_LINKS
# / PIP_NO_INDEX point pip at a mirror.

ARG BASE=python:3.12.12-slim-bookworm
ARG FLAVOR=gpu

FROM ${BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
SHELL ["/bin/sh", "-eu", "-c"]

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
 && /opt/venv/bin/python -c "import sys, onnxruntime as o; sys.exit('${FLAVOR}' == 'gpu' \
        and 'CUDAExecutionProvider' not in o.get_available_providers())" \
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
