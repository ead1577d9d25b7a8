# syntax=docker/dockerfile:1
# Airflow 3.3 with banditops installed and this repository's dags/ as the DAGs folder:
# the image of every Airflow component in docker-compose.yml (api-server, scheduler,
# dag-processor, triggerer, Celery worker).
#
#   docker build -f docker/airflow.Dockerfile -t banditops-airflow .   # from the repo root
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION

USER root
# the pipelines' run folders live on a volume shared by every worker (tasks pass paths)
RUN mkdir -p /opt/banditops/runs /opt/banditops/workspace \
 && chown -R airflow:0 /opt/banditops
USER airflow
WORKDIR /opt/banditops

# torch from the PyTorch CPU index first, in the project's range
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch>=2.5,<2.15"

COPY --chown=airflow:0 pyproject.toml README.md ./
COPY --chown=airflow:0 bandit_core bandit_core
COPY --chown=airflow:0 eventstore eventstore
COPY --chown=airflow:0 modelregistry modelregistry
COPY --chown=airflow:0 validation validation
COPY --chown=airflow:0 serving serving
COPY --chown=airflow:0 training training
COPY --chown=airflow:0 monitoring monitoring
COPY --chown=airflow:0 ops ops
COPY --chown=airflow:0 benchmarks benchmarks
# Airflow pinned to the image's own version (the image's documented way to add packages),
# and banditops with its `train` (pipelines, monitor) and `celery` extras (the Celery provider
# and a compatible celery)
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" ".[train,celery]" \
 && rm -rf build ./*.egg-info

COPY --chown=airflow:0 dags /opt/banditops/dags
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/banditops/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    BANDITOPS_WORKSPACE=/opt/banditops/workspace \
    BANDITOPS_RUNS_DIR=/opt/banditops/runs
