# syntax=docker/dockerfile:1
# The loop and the trainer: the retraining CronJob runs `unigap loop --via-services ...`, and the
# trainer Jobs it creates run `torchrun ... -m pipelines.trainer` (or `python -m pipelines.trainer`).
# No entrypoint: the chart and the Kubernetes executor give the command.
#
# Build from the repository root:
#   docker build -f docker/loop.Dockerfile -t unigap-loop:0.1.0 .
# Trainers on GPUs (DDP over NCCL) need torch's CUDA build of the same version:
#   docker build -f docker/loop.Dockerfile --build-arg TORCH_INDEX=https://pypi.org/simple \
#     -t unigap-loop:0.1.0-cuda .
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
# (the `services` extra, the kubernetes client among them).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[services]"

# ---- runtime: the environment, a non-root user, no build tools, no sources
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="unigap-loop" \
      org.opencontainers.image.description="unigap retraining loop and trainer job" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 unigap \
    && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin unigap
COPY --from=build /opt/venv /opt/venv
# The loop keeps fetched checkpoints under ./runs/cache: the working directory must be writable
# (the chart mounts an emptyDir at /work; the trainer writes under /tmp and /cache).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 1000:1000
WORKDIR /work
CMD ["unigap", "--help"]
