# syntax=docker/dockerfile:1
# The decision service: `banditops serve` (FastAPI + uvicorn), installed without Airflow.
# Also the image of the MLflow tracking server and of the event-store migration in
# docker-compose.yml (it holds mlflow and psycopg2).
#
#   docker build -f docker/serving.Dockerfile -t banditops-serving .   # from the repo root
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# an unprivileged user whose home is the service's workspace (generated salt, snapshots)
RUN groupadd --system banditops \
 && useradd --system --gid banditops --home-dir /var/lib/banditops --create-home banditops

WORKDIR /opt/banditops

# 1. torch from the PyTorch CPU index (no CUDA libraries), in the project's range
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.5,<2.15"

# 2. the project's base dependencies and its [serve] group: no Airflow, GX or matplotlib
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/requirements.py
RUN python docker/requirements.py --extra serve > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# 3. the project itself (its dependencies are in place: no resolution again)
COPY bandit_core bandit_core
COPY eventstore eventstore
COPY modelregistry modelregistry
COPY validation validation
COPY serving serving
COPY training training
COPY monitoring monitoring
COPY ops ops
COPY benchmarks benchmarks
RUN pip install --no-deps . && rm -rf build ./*.egg-info

USER banditops
ENV BANDITOPS_WORKSPACE=/var/lib/banditops
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["banditops", "serve", "--host", "0.0.0.0", "--port", "8000"]
