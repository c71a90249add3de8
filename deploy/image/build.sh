#!/usr/bin/env bash
# Build egress's image with podman on a machine with no Docker daemon and no registry:
# the base is made locally (build-base.sh) unless --base names one. Online, plain
# `docker build -t egress .` or `podman build --format docker -t egress .` does the same
# on the public python:3.12-slim base.
#
#   deploy/image/build.sh [--tag egress:local] [--base IMAGE] [--export DIR]
#
# --export DIR also writes the image's root filesystem to DIR/rootfs and its configuration
# (podman image inspect) to DIR/image.json: what tests/test_image_run.py runs under bubblewrap
# the way a pod runs the image (podman run needs a cgroup setup some kernels lack).
# PIP_CERT (environment): a CA bundle pip needs on this machine (a TLS-intercepting proxy);
# it is bound into the build steps only and does not land in the image.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
context="$(cd "$here/../.." && pwd)"
tag="egress:local" base="" export_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --export) export_dir="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (expected --tag, --base or --export)" >&2; exit 2 ;;
  esac
done
[ -n "$base" ] || base="$("$here/build-base.sh")"

args=(--isolation=chroot --format docker --build-arg "BASE=$base" -t "$tag" -f "$context/Dockerfile")
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  args+=(-v "$PIP_CERT:/run/build-ca.crt:ro" --build-arg PIP_CERT=/run/build-ca.crt)
fi
previous="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
podman build -q "${args[@]}" "$context" >/dev/null
echo "$tag"
# The image this tag named before is of no further use (its layers would pile up build after
# build); the build's intermediate layers stay, as the next build's cache.
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi

if [ -n "$export_dir" ]; then
  mkdir -p "$export_dir"
  rm -rf "$export_dir/rootfs.part" && mkdir "$export_dir/rootfs.part"
  mnt="$(podman image mount "$tag")"
  tar -C "$mnt" -c . | tar -C "$export_dir/rootfs.part" -x
  podman image unmount "$tag" >/dev/null
  podman image inspect "$tag" >"$export_dir/image.json"
  rm -rf "$export_dir/rootfs" && mv "$export_dir/rootfs.part" "$export_dir/rootfs"
fi
