#!/bin/sh
# The Airflow image's entrypoint, as in the official image: an Airflow command without the
# `airflow` prefix (`scheduler`, `celery worker`, `db migrate`) runs as `airflow ...`;
# a shell, Python or banditops command line runs as given (`celery worker` is
# `airflow celery worker`).
set -e
# docker/.env.example's placeholders never run: with its JWT secret anyone signs an admin
# token, with its all-zero Fernet key every stored connection password is readable
for name in AIRFLOW__CORE__FERNET_KEY AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__API__SECRET_KEY; do
  eval "value=\${$name:-}"
  case "$value" in
    *change-me* | AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=)
      echo "error: $name is a placeholder of docker/.env.example: set a secret of your own in docker/.env" >&2
      exit 2 ;;
  esac
done
case "${1:-}" in
  "" ) exec airflow --help ;;
  bash | sh | python | python3 | airflow | banditops ) exec "$@" ;;
  * ) exec airflow "$@" ;;
esac
