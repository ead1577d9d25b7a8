# The MLflow tracking server (registry + artifact proxy) on PostgreSQL: MLflow and psycopg2
# in the project's versions, nothing else of banditops.
#
#   DOCKER_BUILDKIT=1 docker build -f docker/mlflow.Dockerfile -t banditops-mlflow .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG REQUIREMENTS="--extra serve --only mlflow --only psycopg2-binary"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

RUN python3 -m venv /opt/venv \
 && groupadd --system mlflow \
 && useradd --system --gid mlflow --home-dir /var/lib/mlflow --create-home mlflow

COPY pyproject.toml /tmp/pyproject.toml
COPY docker/requirements.py /tmp/requirements.py
RUN --mount=type=cache,target=/root/.cache/pip \
    python /tmp/requirements.py --pyproject /tmp/pyproject.toml ${REQUIREMENTS} \
       > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt /tmp/requirements.py /tmp/pyproject.toml

USER mlflow
WORKDIR /var/lib/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
