#!/bin/sh
# The Airflow image's entrypoint, as in the official image: an Airflow command without the
# `airflow` prefix (`scheduler`, `celery worker`, `db migrate`) runs as `airflow ...`;
# a shell or Python command line runs as given.
set -e
case "${1:-}" in
  "" ) exec airflow --help ;;
  bash | sh | python | python3 | airflow | mlflow | banditops | celery ) exec "$@" ;;
  * ) exec airflow "$@" ;;
esac
