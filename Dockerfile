# egress: credential-injecting egress proxy for AI agents.
# Runs as the fixed non-root UID 1337 (the UID `egress redirect` exempts), with a read-only
# root filesystem: state lives only in the mounted volumes below.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY egress ./egress
COPY addons ./addons
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
# iptables/nftables for the redirect init container (same image, run with NET_ADMIN as root).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables nftables \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1337 egress \
    && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin egress
COPY --from=build /install /usr/local
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
# /etc/egress: config (read-only); /var/run/egress: the CA certificate for the agent;
# /tmp: the proxy's private, per-start directory (an emptyDir only the proxy mounts).
VOLUME ["/etc/egress", "/var/run/egress", "/tmp"]
USER 1337:1337
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["egress"]
CMD ["run", "--config", "/etc/egress/egress.yaml"]
