# Image of the shadowproxy front proxy.
#
#   docker build -t shadowproxy .
#   docker run --read-only -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/configs/minimal.yaml:/etc/shadowproxy/config.yaml:ro" shadowproxy
#
# Debian slim, not Alpine: the onnxruntime, numpy and scipy wheels are built for glibc, so
# every dependency installs as a prebuilt wheel and nothing is compiled.
#
# The container runs as UID/GID 10001 on a read-only root filesystem. It writes only to /tmp
# and /var/lib/shadowproxy (comparator snapshots, pair logs): both are VOLUMEs here, and the
# Helm chart mounts an emptyDir (or a PVC) at each. The config is read from
# /etc/shadowproxy/config.yaml (the chart's ConfigMap), local models from wherever it says.
#
# No HEALTHCHECK (see the checkov skip below): Kubernetes ignores it and probes
# /healthz/live and /healthz/ready on the admin port instead, and that port comes from the
# config, so a probe baked into the image could fail a healthy container.
# checkov:skip=CKV_DOCKER_2:Kubernetes probes the admin port set by the config; the image cannot know it

# ---- init: tini, the image's PID 1 ------------------------------------------------------------
# PID 1 inherits every orphaned process of the container and must reap it. A local model's
# worker can leave helper processes behind when it crashes (a stray n_jobs starts a dozen);
# the executor kills them, and they would stay as zombies under a PID 1 that does not reap
# what it never started. Debian's static tini reaps them and passes SIGTERM on to shadowproxy.
FROM python:3.11-slim-bookworm AS init
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# ---- build: a virtualenv holding the runtime dependencies and the package --------------------
FROM python:3.11-slim-bookworm AS build

ENV VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
ENV PATH=${VIRTUAL_ENV}/bin:${PATH}

RUN python -m venv "$VIRTUAL_ENV"

WORKDIR /src

# The dependencies come first, from the lock and the project metadata alone, so this layer is
# rebuilt only when one of those two files changes, not on every source edit. Only the
# runtime dependencies of pyproject.toml are installed (test tools stay out), each at its
# locked version; --only-binary makes a missing wheel fail the build instead of needing a
# compiler.
COPY requirements.lock pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > runtime-requirements.txt \
    && python -m pip install --no-cache-dir --only-binary=:all: \
        -c requirements.lock -r runtime-requirements.txt

# The package itself: its dependencies are already in place, pip check proves none is
# missing or at a conflicting version.
COPY README.md ./
COPY shadowproxy ./shadowproxy
RUN python -m pip install --no-cache-dir --no-deps -c requirements.lock . \
    && python -m pip check \
    && python -m pip uninstall --yes pip setuptools \
    && python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash "$VIRTUAL_ENV/lib"

# ---- runtime: the base image, the virtualenv and an unprivileged user; no compiler, no pip ---
FROM python:3.11-slim-bookworm AS runtime

ARG VERSION=0.1.0
ARG SOURCE_URL=https://github.com/shadowproxy/shadowproxy
LABEL org.opencontainers.image.title="shadowproxy" \
      org.opencontainers.image.description="Front proxy that shadow-tests ML models: clients get production's answers, candidates get a copy of the traffic and are compared." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only, and every module is compiled
# at build time anyway. MPLCONFIGDIR: `shadowproxy report` draws with matplotlib, whose
# cache would otherwise go to the (absent) home folder.
ENV VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
ENV PATH=${VIRTUAL_ENV}/bin:${PATH}

# pip, setuptools and wheel of the base image are not needed to run and would let the
# container install code; the standard library is compiled as the base image ships it
# without bytecode. --no-log-init keeps a high UID from growing a sparse lastlog file.
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
    && python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        -x '/(test|tests|idle_test)/' /usr/local/lib/python3.11 \
    && groupadd --gid 10001 shadowproxy \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin shadowproxy \
    && install -d -m 0755 /etc/shadowproxy \
    && install -d -m 0750 -o 10001 -g 10001 /var/lib/shadowproxy

COPY --from=build /opt/venv /opt/venv
COPY --from=init /usr/bin/tini-static /usr/bin/tini

VOLUME ["/tmp", "/var/lib/shadowproxy"]
EXPOSE 8080 9090
USER 10001:10001

# Exec form: tini is PID 1 and passes SIGTERM on to shadowproxy, which drains in-flight
# requests and writes its last snapshot before exiting 0, the exit status tini returns.
# -s makes tini the reaper of orphans also where it is not PID 1 (`docker run --init`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "shadowproxy"]
CMD ["serve", "--config", "/etc/shadowproxy/config.yaml"]
