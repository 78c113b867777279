#!/usr/bin/env bash
# Create .venv and install selfsup with the pinned dependencies of
# requirements/ci.lock. Safe to run again: it returns at once when nothing
# changed. Downloads are cached by uv (~/.cache/uv) between runs.
#
# torch comes from PyPI's default (CUDA) build: it runs on CPU too, and it is
# the build PyPI's torchvision is made for. uv does not read pip's config, so
# a local CPU-only torch in pip's find-links cannot sneak in and break
# torchvision.
#
# Environment: SELFSUP_PYTHON (interpreter, default python3),
#              SELFSUP_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${SELFSUP_PYTHON:-python3}
VENV=${SELFSUP_VENV:-.venv}
LOCK=requirements/ci.lock

find_uv() {
    command -v uv 2>/dev/null && return
    for candidate in "$HOME/.local/bin/uv" "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/uv"; do
        [ -x "$candidate" ] && { echo "$candidate"; return; }
    done
    return 1
}

UV=$(find_uv) || {
    echo "setup-env: installing uv with pip" >&2
    "$PYTHON" -m pip install --quiet --disable-pip-version-check uv
    UV=$(find_uv)
}

stamp="$VENV/.selfsup-setup"
digest=$(cat "$LOCK" pyproject.toml scripts/setup-env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && [ -x "$VENV/bin/selfsup" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$UV" venv --quiet --python "$PYTHON" "$VENV"
echo "setup-env: installing pinned dependencies into $VENV (first run downloads ~4 GB of torch/CUDA wheels)" >&2
"$UV" pip install --quiet --python "$VENV/bin/python" -r "$LOCK"
"$UV" pip install --quiet --python "$VENV/bin/python" --no-deps -e .
echo "$digest" > "$stamp"
echo "setup-env: ready ($("$VENV/bin/python" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")'))" >&2
