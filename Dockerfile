# customer-worker: Debian's Python, dependencies from the hashed runtime lock, run as a non-root user.
# Build: scripts/image.sh (or `podman build -t customer-worker .` / `docker build -t customer-worker .`).

FROM debian:trixie-slim AS build
# Debian's python3 and pip build the project's wheel; nothing of this stage but /opt/venv reaches the final image.
# Debian packages are not pinned on purpose (DL3008): each build takes the distribution's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-setuptools python3-wheel python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A virtualenv without pip: the system pip installs into it (`--python`), so no installer ends up in the image.
RUN python3 -m venv --without-pip /opt/venv
COPY requirements/runtime.lock.txt /src/requirements/runtime.lock.txt
# Every file is checked against the lock's hashes; only wheels, so nothing is compiled.
RUN python3 -m pip --python /opt/venv/bin/python install --require-hashes --only-binary=:all: --no-deps \
    -r /src/requirements/runtime.lock.txt
COPY pyproject.toml README.md /src/
COPY worker /src/worker
RUN python3 -m pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels /src \
    && python3 -m pip --python /opt/venv/bin/python install --no-deps --no-index /tmp/wheels/*.whl

FROM debian:trixie-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 worker \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin worker
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HTTP_PORT=8080 LOG_FORMAT=json
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# SIGTERM reaches the worker directly (exec form, no shell), which drains and exits 0 within SHUTDOWN_TIMEOUT.
ENTRYPOINT ["customer-worker"]
CMD ["run"]
