#!/usr/bin/env bash
# Make a Debian bookworm base image locally, for machines that cannot pull python:3.12-slim
# (no registry reachable) but can reach a Debian mirror: debootstrap a minimal root with
# python3, its venv module and the CA certificates, bring it up to date from
# bookworm-updates and bookworm-security, drop apt's caches and import it into podman.
#
#   deploy/image/build-base.sh            # prints the base image's name
#
# The root is kept as a tarball in $EGRESS_IMAGE_CACHE and reused for a week (a new ISO week
# makes a new base, so security updates arrive). Needs root, debootstrap and podman.
set -euo pipefail
cache="${EGRESS_IMAGE_CACHE:-/var/cache/egress-image}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
week="$(date -u +%G-w%V)"
image="localhost/egress-base:bookworm-${week}"

if podman image exists "$image"; then
  echo "$image"
  exit 0
fi
mkdir -p "$cache"
tarball="$cache/egress-base-bookworm-${week}.tar"
if [ ! -s "$tarball" ]; then
  root="$(mktemp -d "$cache/root.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; echo "build-base: debootstrap failed (log: $cache/debootstrap.log)" >&2; exit 1; }
  cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
  chroot "$root" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get upgrade -y -qq >/dev/null
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/apt \
    "$root"/var/log/dpkg.log "$root"/var/log/bootstrap.log
  tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
  # Older weeks' bases are of no further use.
  find "$cache" -maxdepth 1 -name 'egress-base-bookworm-*.tar' ! -name "${tarball##*/}" -delete
fi
podman import -q "$tarball" "$image" >/dev/null
echo "$image"
