# Airflow 3.3 with banditops installed and this repository's dags/ as the DAGs folder: the
# image of every Airflow component in docker-compose.yml (api-server, scheduler,
# dag-processor, triggerer, Celery worker). Commands are given in full (`airflow scheduler`).
#
#   DOCKER_BUILDKIT=1 docker build -f docker/airflow.Dockerfile -t banditops-airflow .
#
# Build arguments (all optional):
#   BASE_IMAGE      any Debian-like image with python3.11 and its venv module
#   TORCH_PIP_ARGS  where torch comes from (default: the PyTorch CPU index)
#   TORCH_SPEC      which torch (default: the project's range)
#   REQUIREMENTS    what docker/requirements.py selects from pyproject.toml
#   AIRFLOW_EXTRAS  Airflow's own extras (fab: the FAB auth manager, `airflow users`)
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG AIRFLOW_VERSION=3.3.2
ARG AIRFLOW_EXTRAS=fab
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG TORCH_SPEC="torch>=2.5,<2.15"
ARG REQUIREMENTS="--extra train --extra celery"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    AIRFLOW_HOME=/opt/airflow

# the `airflow` user (uid 50000, group 0, as in the official image); the pipelines' run
# folders live on a volume shared by every worker (tasks pass paths)
RUN python3 -m venv /opt/venv \
 && useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home airflow \
 && mkdir -p /opt/airflow/logs /opt/banditops/runs /opt/banditops/workspace \
 && chown -R airflow:0 /opt/airflow /opt/banditops \
 && chmod -R g+w /opt/airflow /opt/banditops

WORKDIR /opt/banditops

# 1. torch (CPU build). pip's cache survives between builds (BuildKit)
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ${TORCH_PIP_ARGS} "${TORCH_SPEC}"

# 2. Airflow in this version and the project's dependencies (with the Celery provider) in
#    the tested versions (docker/constraints.txt): rebuilt only when those files change
COPY pyproject.toml ./
COPY docker/requirements.py docker/requirements.py
COPY docker/constraints.txt /tmp/constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python docker/requirements.py ${REQUIREMENTS} > /tmp/requirements.txt \
 && pip install "apache-airflow[${AIRFLOW_EXTRAS}]==${AIRFLOW_VERSION}" \
        -r /tmp/requirements.txt -c /tmp/constraints.txt \
 && rm /tmp/requirements.txt /tmp/constraints.txt

# 2b. asyncpg: Airflow 3 opens async sessions on its metadata database, and on PostgreSQL
#     through asyncpg, which nothing above requires (`airflow` fails to import without it)
COPY docker/constraints.txt /tmp/constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install asyncpg -c /tmp/constraints.txt && rm /tmp/constraints.txt

# 3. the project itself
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
RUN pip install --no-deps . && rm -rf build ./*.egg-info

COPY docker/airflow-entrypoint.sh /usr/local/bin/airflow-entrypoint
COPY --chown=airflow:0 dags /opt/banditops/dags
USER airflow
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/banditops/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    BANDITOPS_WORKSPACE=/opt/banditops/workspace \
    BANDITOPS_RUNS_DIR=/opt/banditops/runs
ENTRYPOINT ["airflow-entrypoint"]
CMD ["--help"]
