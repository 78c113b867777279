#!/usr/bin/env bash
# Re-pin requirements/ci.lock from pyproject.toml (run after changing dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
uv pip compile pyproject.toml --extra dev --extra deepspeed \
    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
    --no-header --output-file requirements/ci.lock "$@"
