# syntax=docker/dockerfile:1
# The judge: one process that runs Triton Inference Server (nvidia-pytriton bundles tritonserver;
# the judge model is bound to it with dynamic batching) and the JudgeService gRPC front.
# Ports: gRPC front 50052, Prometheus /metrics 9090, Triton HTTP 8000, gRPC 8001, metrics 8002.
#
# Build from the repository root:
#   docker build -f docker/judge.Dockerfile -t unigap-judge:0.1.0 .
# For GPUs: --build-arg TORCH_INDEX=https://pypi.org/simple (torch's CUDA build, same version).
# Run it with room in /dev/shm, which PyTriton passes tensors through:
#   docker run --shm-size=1g -p 50052:50052 unigap-judge:0.1.0
#
# Why this base is Triton-capable: PyTriton's tritonserver needs glibc >= 2.35 (bookworm has 2.36)
# and the interpreter's shared libpython3.11 (the python image is built --enable-shared; the judge
# puts its LIBDIR first on LD_LIBRARY_PATH). Its other libraries ship inside the wheel, CUDA
# runtime included, and the model itself runs in this Python process (torch), so no CUDA base image
# is needed: the NVIDIA container toolkit mounts the driver. The project's machines run this same
# tritonserver on Debian bookworm with Python 3.11 in their tests.
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
# (the `services` extra, nvidia-pytriton among them).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[services]"

# ---- runtime: the environment, a non-root user, no build tools, no sources
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="unigap-judge" \
      org.opencontainers.image.description="unigap JudgeService: Triton Inference Server (PyTriton) and its gRPC front" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 unigap \
    && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin unigap
COPY --from=build /opt/venv /opt/venv
# Triton's workspace and log, and PyTriton's files, go under /tmp (a volume in the chart).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    UNIGAP_HOST=0.0.0.0 \
    UNIGAP_PORT=50052 \
    UNIGAP_METRICS_PORT=9090 \
    UNIGAP_TRITON_HTTP_PORT=8000 \
    UNIGAP_TRITON_GRPC_PORT=8001 \
    UNIGAP_TRITON_METRICS_PORT=8002 \
    UNIGAP_CACHE_DIR=/tmp/unigap-checkpoints
USER 1000:1000
WORKDIR /tmp
EXPOSE 50052 9090 8000 8001 8002
ENTRYPOINT ["python", "-m", "services.judge"]
