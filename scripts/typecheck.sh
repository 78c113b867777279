#!/usr/bin/env bash
# Type-check the package with mypy (run by `make lint` and CI).
#
# The code folders install as selfsup.ssl, selfsup.pipelines, ... through
# setuptools' package-dir, a mapping mypy cannot read; so the package is laid
# out as it installs, with symbolic links in a temporary folder, and mypy
# checks `-p selfsup` there. Paths in its messages read selfsup/<folder>/...:
# selfsup/pipelines/config.py is pipelines/config.py in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PYTHON=${SELFSUP_VENV:-.venv}/bin/python
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/selfsup"
for file in selfsup/*.py; do ln -s "$root/$file" "$tree/selfsup/"; done
for folder in ssl pipelines eval slurm; do ln -s "$root/$folder" "$tree/selfsup/$folder"; done
cd "$tree"
"$root/$PYTHON" -m mypy --config-file "$root/pyproject.toml" --python-executable "$root/$PYTHON" \
    --cache-dir "$root/.mypy_cache" -p selfsup
