# For `make compose-test` only: a stand-in for the official redis image (no registry is
# reachable there), Debian's Redis on the local base. With a registry, use redis:7.4.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER redis
CMD ["redis-server", "--protected-mode", "no"]
