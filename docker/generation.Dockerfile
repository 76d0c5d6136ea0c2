# syntax=docker/dockerfile:1
# The generation service: `python -m services.generation` (gRPC 50051, Prometheus /metrics 9090).
#
# Build from the repository root:
#   docker build -f docker/generation.Dockerfile -t unigap-generation:0.1.0 .
# For GPUs, take torch's CUDA build of the same version (PyPI's Linux wheel bundles the CUDA runtime):
#   docker build -f docker/generation.Dockerfile --build-arg TORCH_INDEX=https://pypi.org/simple \
#     -t unigap-generation:0.1.0-cuda .
#
# The base is pinned by tag; pin it by digest too (python:3.11.13-slim-bookworm@sha256:...) where
# your registry policy asks for it: `docker buildx imagetools inspect python:3.11.13-slim-bookworm`.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build: a virtual environment with torch and the project, nothing else is kept
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, from its own index: a bare `torch` from PyPI is the multi-GB CUDA build.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY unigap ./unigap
COPY services ./services
COPY pipelines ./pipelines
# The project itself, not a registry package: its dependencies are pinned in pyproject.toml
# (the `services` extra).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[services]"

# ---- runtime: the environment, a non-root user, no build tools, no sources
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="unigap-generation" \
      org.opencontainers.image.description="unigap GenerationService (gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 unigap \
    && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin unigap
COPY --from=build /opt/venv /opt/venv
# Everything it writes goes under /tmp and the checkpoint cache: both are volumes in the chart,
# whose pods run with a read-only root filesystem.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    UNIGAP_HOST=0.0.0.0 \
    UNIGAP_PORT=50051 \
    UNIGAP_METRICS_PORT=9090 \
    UNIGAP_CACHE_DIR=/tmp/unigap-checkpoints
USER 1000:1000
WORKDIR /tmp
EXPOSE 50051 9090
ENTRYPOINT ["python", "-m", "services.generation"]
