#!/usr/bin/env bash
# Build and install ffcv 1.0.2 into the selfsup environment (Debian/Ubuntu).
#
# ffcv compiles a small C++ library against libturbojpeg and OpenCV. Only
# OpenCV's core and imgproc are needed, so instead of the full libopencv-dev
# (~840 MB) this installs the two -dev packages and gives the build an
# opencv4.pc that lists just those two libraries, and an opencv2/opencv.hpp
# that includes just their headers (Debian's own opencv.hpp pulls in every
# module). Safe to run again: returns at once when ffcv already imports.
#
# Environment: SELFSUP_VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SELFSUP_VENV:-.venv}
PY="$VENV/bin/python"
APT_PACKAGES=(pkg-config libturbojpeg0-dev libopencv-core-dev libopencv-imgproc-dev)

[ -x "$PY" ] || scripts/setup-env.sh
if "$PY" -c "import ffcv, ffcv.loader" 2>/dev/null; then
    exit 0
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-ffcv: apt-get install ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

shim="$VENV/.ffcv-build"
mkdir -p "$shim/pkgconfig" "$shim/include/opencv2"
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
cat > "$shim/pkgconfig/opencv4.pc" <<PC
libdir=/usr/lib/$multiarch
includedir=/usr/include/opencv4

Name: OpenCV
Description: OpenCV core + imgproc, for building ffcv
Version: 4.6.0
Libs: -L\${libdir} -lopencv_imgproc -lopencv_core
Cflags: -I$PWD/$shim/include -I\${includedir}
PC
cat > "$shim/include/opencv2/opencv.hpp" <<'HPP'
#pragma once
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
HPP

UV=$(command -v uv || echo "$HOME/.local/bin/uv")
[ -x "$UV" ] || UV="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/uv"
echo "install-ffcv: building ffcv 1.0.2" >&2
"$UV" pip install --quiet --python "$PY" -r requirements/ffcv.lock
# --no-deps: its dependencies come pinned from ffcv.lock (with headless OpenCV).
PKG_CONFIG_PATH="$PWD/$shim/pkgconfig" \
    "$UV" pip install --quiet --python "$PY" --no-deps --no-build-isolation ffcv==1.0.2
"$PY" -c "import ffcv, ffcv.loader" || { echo "install-ffcv: ffcv does not import" >&2; exit 1; }
echo "install-ffcv: ffcv $("$PY" -c 'from importlib.metadata import version; print(version("ffcv"))') ready" >&2
