# egress: credential-injecting egress proxy for AI agents.
# Runs as the fixed non-root UID 1337 (the UID `egress redirect` exempts), with a read-only
# root filesystem: state lives only in the mounted volumes below.
#
# BASE: any Debian-based image with python3 >= 3.11 and its venv module. The default is the
# public slim image; offline, deploy/image/build-base.sh makes a Debian bookworm base
# locally (docs/kubernetes.md, "Build the image"). Both stages must use the same BASE: the
# venv's python links to the base's interpreter.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
WORKDIR /src
# A venv works on both bases (Debian's own python3 is "externally managed" and has no pip).
# Everything pip installs comes from locks with hashes, in a layer a change to egress's code
# does not rebuild: the dependencies (one lock per Python minor version: mitmproxy 11 on
# 3.11, 12 on 3.12) into the venv, and what builds egress (setuptools, wheel) beside it, so
# that egress builds with no build isolation (which would fetch those unpinned) and no
# index (an sdist among the dependencies, pyperclip, builds the same way). pip check proves
# the set is whole; then pip and the venv's own setuptools leave it.
# A build machine behind a TLS-intercepting proxy passes its CA bundle as the build secret
# "pipcert" (deploy/image/build.sh does): mounted for these steps only, never in a layer.
COPY deploy/image/requirements-py*.txt deploy/image/build-requirements.txt ./
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
    && python3 -m venv /opt/egress \
    && py="$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')" \
    && test -f "requirements-py${py}.txt" \
    && /opt/egress/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --no-deps --target /opt/build-deps -r build-requirements.txt \
    && PYTHONPATH=/opt/build-deps /opt/egress/bin/pip install --no-cache-dir \
        --disable-pip-version-check --require-hashes --no-deps --no-build-isolation \
        -r "requirements-py${py}.txt"
COPY pyproject.toml README.md ./
COPY egress ./egress
COPY addons ./addons
RUN PYTHONPATH=/opt/build-deps /opt/egress/bin/pip install --no-cache-dir \
        --disable-pip-version-check --no-index --no-deps --no-build-isolation . \
    && /opt/egress/bin/pip check \
    && /opt/egress/bin/pip uninstall -q -y pip setuptools

FROM ${BASE}
# iptables/nftables for the redirect init container (same image, run with NET_ADMIN as root).
# No setuid or setgid program stays (su, mount, passwd...): nothing in the image may gain
# privileges, whatever the runtime allows. The mount points are made here: buildah's
# VOLUME does not create them, and a read-only root cannot get them later.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables nftables \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    && find / -xdev -type f -perm /6000 -exec chmod ug-s {} + \
    && mkdir -p /etc/egress /var/run/egress \
    && groupadd --gid 1337 egress \
    && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin egress
COPY --from=build /opt/egress /opt/egress
ENV PATH=/opt/egress/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
# /etc/egress: config (read-only); /var/run/egress: the CA certificate for the agent;
# /tmp: the proxy's private, per-start directory (an emptyDir only the proxy mounts).
VOLUME ["/etc/egress", "/var/run/egress", "/tmp"]
USER 1337:1337
EXPOSE 8080 9901
# Docker and podman --format docker keep this; Kubernetes uses the pod's probes instead.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["egress"]
CMD ["run", "--config", "/etc/egress/egress.yaml"]
