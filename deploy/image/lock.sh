#!/usr/bin/env bash
# Re-lock the image's runtime dependencies (exact versions with sha256 hashes), one lock per
# Python minor version the Dockerfile may meet: 3.11 (Debian bookworm's python3, mitmproxy 11)
# and 3.12 (the public python:3.12-slim base, mitmproxy 12). Run after changing
# [project.dependencies] in pyproject.toml; tests/test_image.py checks the locks still
# satisfy it.
set -euo pipefail
cd "$(dirname "$0")/../.."
for v in 3.11 3.12; do
  uv pip compile pyproject.toml --python-version "$v" --generate-hashes -q \
    --custom-compile-command "deploy/image/lock.sh" \
    -o "deploy/image/requirements-py${v/./}.txt"
done
