# syntax=docker/dockerfile:1
# One image for every role: `apns-relay api`, `apns-relay worker`, `apns-relay serve`.
# Build: docker build -t gms-apns-relay:dev .
# The development image adds the development kit (relay_devkit: `apns-relay apns-sim`, the
# simulators compose and the kind overlay stand in for Apple with):
#   docker build --build-arg DEVKIT=true -t gms-apns-relay-devkit:dev .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a virtualenv holding the hash-pinned runtime dependencies and the relay itself ---
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The lock alone first, so editing the code does not invalidate the dependency layer.
COPY requirements/runtime.lock requirements/runtime.lock
# --only-binary: every dependency ships a manylinux wheel; a missing one must fail the build here
# rather than pull a compiler into it.
RUN pip install --require-hashes --only-binary=:all: -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY relay ./relay
# The development kit is copied aside and joins the package only for the development image
# (DEVKIT=true); the production image (the default) holds none of it.
ARG DEVKIT=false
COPY relay_devkit /opt/devkit/relay_devkit
# Installed (not editable), byte-compiled by pip, so the read-only runtime never writes .pyc files.
RUN if [ "$DEVKIT" = "true" ]; then cp -r /opt/devkit/relay_devkit ./relay_devkit; fi \
    && pip install --no-deps .

# --- runtime: the interpreter, the venv and an unprivileged user; no pip builds, no compilers ---
FROM ${PYTHON_IMAGE} AS runtime
ARG RELAY_UID=10001
RUN groupadd --system --gid ${RELAY_UID} relay \
    && useradd --system --uid ${RELAY_UID} --gid relay --create-home --home-dir /home/relay \
        --shell /usr/sbin/nologin relay \
    && mkdir -p /etc/apns-relay/keys /var/lib/apns-sim /var/spool/apns-relay \
    && chown relay:relay /var/lib/apns-sim /var/spool/apns-relay
# /var/lib/apns-sim and /var/spool/apns-relay (the api's spool, ingest.spool_dir) are owned by the
# relay user so that a fresh named volume mounted there (docker copies the mount point's
# ownership into it) is writable by the simulator and the api.
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAY_LOGGING_FORMAT=json \
    APNS_RELAY_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
USER ${RELAY_UID}:${RELAY_UID}
# Writable for the user (unless the orchestrator makes the root read-only): `serve --dev` keeps
# its development-mode state (.relay-dev/) in the working directory.
WORKDIR /home/relay
EXPOSE 8080 8081
# The worker role answers on 8081: set APNS_RELAY_HEALTHCHECK_URL for it. urlopen raises on a
# refused connection, a timeout or any non-2xx answer, which is the failing exit status.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['APNS_RELAY_HEALTHCHECK_URL'], timeout=4)"]
# The role is the first argument. By default both roles in one process, so a single
# `docker run -e RELAY_REDIS_URL=... -e RELAY_CONFIG=...` is a complete relay; compose and
# Kubernetes always name their role (api, worker, apns-sim) explicitly. Without --dev (never the
# default here) `serve` refuses to start when redis.url, apps or a credential is missing.
ENTRYPOINT ["apns-relay"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
