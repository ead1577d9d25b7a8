#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d/):
# one role and one database each for the event store, MLflow and Airflow. The passwords
# come from the container's environment (docker-compose.yml, values in .env).
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v events_password="$EVENTS_DB_PASSWORD" \
    -v mlflow_password="$MLFLOW_DB_PASSWORD" \
    -v airflow_password="$AIRFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE banditops LOGIN PASSWORD :'events_password';
CREATE DATABASE banditops OWNER banditops;

CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;

CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
SQL
