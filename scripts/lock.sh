#!/usr/bin/env bash
# Re-pin requirements/*.lock from pyproject.toml and requirements/ffcv.in
# (run after changing dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
target=(--python-version 3.11 --python-platform x86_64-unknown-linux-gnu --no-header)
uv pip compile pyproject.toml --extra dev --extra deepspeed "${target[@]}" \
    --output-file requirements/ci.lock "$@"
uv pip compile requirements/ffcv.in --constraint requirements/ci.lock "${target[@]}" \
    --output-file requirements/ffcv.lock "$@"
