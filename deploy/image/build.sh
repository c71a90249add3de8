#!/usr/bin/env bash
# Build egress's image with podman on a machine with no Docker daemon and no registry:
# the base is made locally (build-base.sh) unless --base names one. Online, plain
# `docker build -t egress .` or `podman build --format docker -t egress .` does the same
# on the public python:3.12-slim base.
#
#   deploy/image/build.sh [--tag egress:local] [--base IMAGE] [--export DIR]
#
# --export DIR also writes the image's root file system to DIR/rootfs (extended attributes
# such as file capabilities kept) and its configuration (podman image inspect) to
# DIR/image.json: what tests/test_image_run.py runs under bubblewrap the way a pod runs the
# image (podman run needs a cgroup setup some kernels lack).
# PIP_CERT (environment): a CA bundle pip needs on this machine (a TLS-intercepting proxy);
# it reaches the build as a build secret, mounted for pip's steps only, in no layer.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
context="$(cd "$here/../.." && pwd)"
cache="${EGRESS_IMAGE_CACHE:-/var/cache/egress-image}"
tag="egress:local" base="" export_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --export) export_dir="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (expected --tag, --base or --export)" >&2; exit 2 ;;
  esac
done
# Stopped (a test run ends, Ctrl-C): stop podman too, and leave no image mounted.
mounted="" iid=""
cleanup() {
  [ -z "$mounted" ] || podman image unmount "$mounted" >/dev/null 2>&1 || true
  [ -z "$iid" ] || rm -f "$iid"
}
trap cleanup EXIT
trap 'trap - TERM; cleanup; kill -- -$$ 2>/dev/null; exit 143' TERM
# Long steps run in the background and are waited for: bash runs a trap only between
# commands, and `wait` is one it interrupts.
bg() { "$@" & wait $!; }
[ -n "$base" ] || base="$(bg "$here/build-base.sh")"

mkdir -p "$cache"
exec 8>"$cache/build.lock"
flock 8  # builds (and their exports) one at a time: a tag never moves under an export

iid="$(mktemp)"
args=(--isolation=chroot --format docker --build-arg "BASE=$base" --iidfile "$iid" -t "$tag"
      -f "$context/Dockerfile")
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  args+=(--secret "id=pipcert,src=$PIP_CERT")
fi
previous="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
bg podman build -q "${args[@]}" "$context" >/dev/null
id="$(cat "$iid")"
id="${id#sha256:}"
echo "$tag"
# The image this tag named before is of no further use (its layers would pile up build after
# build); the build's intermediate layers stay as the next build's cache, for a week.
if [ -n "$previous" ] && [ "$previous" != "$id" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
podman image prune -f --filter until=168h >/dev/null 2>&1 || true

if [ -n "$export_dir" ]; then
  mkdir -p "$export_dir"
  rm -rf "$export_dir/rootfs.part" && mkdir "$export_dir/rootfs.part"
  mnt="$(podman image mount "$id")" && mounted="$id"
  bg bash -o pipefail -c 'tar -C "$1" --xattrs --xattrs-include="*" -c . | tar -C "$2" --xattrs --xattrs-include="*" -x' \
    _ "$mnt" "$export_dir/rootfs.part"
  podman image unmount "$id" >/dev/null && mounted=""
  podman image inspect "$id" >"$export_dir/image.json"
  rm -rf "$export_dir/rootfs" && mv "$export_dir/rootfs.part" "$export_dir/rootfs"
fi
