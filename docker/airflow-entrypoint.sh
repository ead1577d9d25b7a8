#!/bin/sh
# The Airflow image's entrypoint, as in the official image: an Airflow command without the
# `airflow` prefix (`scheduler`, `celery worker`, `db migrate`) runs as `airflow ...`;
# a shell, Python or banditops command line runs as given (`celery worker` is
# `airflow celery worker`).
set -e
case "${1:-}" in
  "" ) exec airflow --help ;;
  bash | sh | python | python3 | airflow | banditops ) exec "$@" ;;
  * ) exec airflow "$@" ;;
esac
