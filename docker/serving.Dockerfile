# The decision service: `banditops serve` (FastAPI + uvicorn) and the event-store migration
# (`banditops db upgrade`). No Airflow, Great Expectations or matplotlib inside, and MLflow's
# client (mlflow-skinny) rather than its server.
#
#   DOCKER_BUILDKIT=1 docker build -f docker/serving.Dockerfile -t banditops-serving .
#
# Build arguments (all optional):
#   BASE_IMAGE      any Debian-like image with python3.11 and its venv module
#   TORCH_PIP_ARGS  where torch comes from (default: the PyTorch CPU index; e.g.
#                   "--find-links http://127.0.0.1:8765/" for a local wheel directory)
#   TORCH_SPEC      which torch (default: the project's range)
#   REQUIREMENTS    what docker/requirements.py selects from pyproject.toml
# The commands are the `banditops` console script that pyproject.toml declares.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG TORCH_SPEC="torch>=2.5,<2.15"
ARG REQUIREMENTS="--extra serve --replace mlflow=mlflow-skinny"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# a virtualenv (the same on the official python image and on a distribution's python3),
# and an unprivileged user whose home is the service's workspace (salt, snapshots)
RUN python3 -m venv /opt/venv \
 && groupadd --system banditops \
 && useradd --system --gid banditops --home-dir /var/lib/banditops --create-home banditops

WORKDIR /opt/banditops

# 1. torch (CPU build; no CUDA libraries). pip's cache survives between builds (BuildKit).
#    Its test suite and test binaries, protoc and C++ headers (for building extensions,
#    torch.compile's C++ backend) are not used by the service: 190 MB less
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-compile ${TORCH_PIP_ARGS} "${TORCH_SPEC}" \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf "$site/torch/test" "$site/torch/include" \
 && find "$site/torch/bin" -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} +

# 2. the project's other dependencies as docker/requirements.py selects them: this layer is
#    rebuilt only when pyproject.toml changes
COPY pyproject.toml ./
COPY docker/requirements.py docker/requirements.py
RUN --mount=type=cache,target=/root/.cache/pip \
    python docker/requirements.py ${REQUIREMENTS} > /tmp/requirements.txt \
 && pip install --no-compile -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# 3. the project itself (its dependencies are in place: no resolution again)
COPY README.md ./
COPY bandit_core bandit_core
COPY eventstore eventstore
COPY modelregistry modelregistry
COPY validation validation
COPY serving serving
COPY training training
COPY monitoring monitoring
COPY ops ops
COPY benchmarks benchmarks
RUN pip install --no-deps --no-compile . && rm -rf build ./*.egg-info

# 4. bytecode for what the commands import (the CLI, the app, MLflow's client): processes
#    start without compiling it, and the image stays 300 MB smaller than with all of it
RUN PYTHONDONTWRITEBYTECODE= python -c "import ops.cli, serving.app, \
serving.models.mlflow_source, modelregistry.registry, mlflow.artifacts, uvicorn"

USER banditops
ENV BANDITOPS_WORKSPACE=/var/lib/banditops
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["banditops", "serve", "--host", "0.0.0.0", "--port", "8000"]
