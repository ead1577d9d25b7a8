# For `make compose-test` only: where no image registry is reachable, a stand-in for the
# official postgres image built on the local base from Debian's PostgreSQL. It honours what
# docker-compose.yml uses of the official image: POSTGRES_USER / POSTGRES_PASSWORD /
# POSTGRES_DB, PGDATA on the data volume, /docker-entrypoint-initdb.d/ on first start,
# PGPORT, and `postgres` arguments as the command. With a registry, use postgres:17.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN mkdir -p /etc/postgresql-common \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /docker-entrypoint-initdb.d /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY docker/compose-test/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:${PATH} \
    PGDATA=/var/lib/postgresql/data
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
