#!/usr/bin/env bash
# Make a Debian bookworm base image locally, for machines that cannot pull python:3.12-slim
# (no registry reachable) but can reach a Debian mirror: debootstrap a minimal root with
# python3, its venv module and the CA certificates (release signatures checked against
# Debian's archive keyring), bring it up to date from bookworm-updates and
# bookworm-security, drop apt's caches and what debootstrap copies from the build machine
# (resolv.conf, hostname, device nodes: the runtime provides those), and import it into
# podman.
#
#   deploy/image/build-base.sh            # prints the base image's name
#
# The root is kept as a tarball in $EGRESS_IMAGE_CACHE and reused for a week (a new ISO week
# makes a new base, so security updates arrive). Needs root, debootstrap, podman and
# debian-archive-keyring.
set -euo pipefail
cache="${EGRESS_IMAGE_CACHE:-/var/cache/egress-image}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
keyring="${DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
week="$(date -u +%G-w%V)"
image="localhost/egress-base:bookworm-${week}"

mkdir -p "$cache"
exec 9>"$cache/base.lock"
flock 9  # one base at a time per cache: a second run waits, then finds it made

if podman image exists "$image"; then
  echo "$image"
  exit 0
fi
[ -r "$keyring" ] || { echo "build-base: no Debian archive keyring at $keyring (apt-get install debian-archive-keyring)" >&2; exit 1; }
tarball="$cache/egress-base-bookworm-${week}.tar"
if [ ! -s "$tarball" ]; then
  root="$(mktemp -d "$cache/root.XXXXXX")"
  part="$(mktemp "$cache/base.XXXXXX.part")"
  trap 'umount -R "$root/proc" 2>/dev/null || true; rm -rf "$root" "$part"' EXIT
  debootstrap --variant=minbase --force-check-gpg --keyring="$keyring" \
    --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; echo "build-base: debootstrap failed (log: $cache/debootstrap.log)" >&2; exit 1; }
  cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
  chroot "$root" apt-get update -qq
  # full-upgrade: a security fix that needs a new package is installed, not held back.
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get full-upgrade -y -qq >/dev/null
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/apt \
    "$root"/var/log/dpkg.log "$root"/var/log/bootstrap.log
  # The build machine's name and resolver, and device nodes, are not the image's.
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  find "$root/dev" -mindepth 1 -delete
  tar -C "$root" -cf "$part" . && mv "$part" "$tarball"
  # Older weeks' bases are of no further use.
  find "$cache" -maxdepth 1 -name 'egress-base-bookworm-*.tar' ! -name "${tarball##*/}" -delete
fi
podman import -q "$tarball" "$image" >/dev/null
# Older weeks' base images too (an image still used by another tag or container stays).
podman images --format '{{.Repository}}:{{.Tag}}' \
  | grep '^localhost/egress-base:bookworm-' | grep -vx "$image" \
  | xargs -r podman rmi >/dev/null 2>&1 || true
echo "$image"
