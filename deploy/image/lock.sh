#!/usr/bin/env bash
# Re-lock the image's runtime dependencies (exact versions with sha256 hashes), one lock per
# Python minor version the Dockerfile may meet: 3.11 (Debian bookworm's python3, mitmproxy 11)
# and 3.12 (the public python:3.12-slim base, mitmproxy 12), and what builds egress itself
# ([build-system] requires: setuptools, wheel; pure Python, one lock for both). Run after
# changing pyproject.toml's dependencies; tests/test_image.py checks the locks satisfy it.
set -euo pipefail
cd "$(dirname "$0")/../.."
for v in 3.11 3.12; do
  uv pip compile pyproject.toml --python-version "$v" --generate-hashes -q \
    --custom-compile-command "deploy/image/lock.sh" \
    -o "deploy/image/requirements-py${v/./}.txt"
done
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  | uv pip compile - --python-version 3.11 --generate-hashes -q \
    --custom-compile-command "deploy/image/lock.sh" -o deploy/image/build-requirements.txt
