#!/usr/bin/env bash
# Build DDPM Studio for Linux: the one-folder bundle dist/ddpm-gui/ (PyInstaller, packaging/ddpm-gui.spec),
# its self-test, and the Debian package dist/ddpm-gui_<version>_<arch>.deb (dpkg-deb).
#
#   packaging/build.sh                 # bundle + self-test + .deb
#   packaging/build.sh --skip-bundle   # reuse dist/ddpm-gui/, rebuild the .deb only
#   packaging/build.sh --no-self-test  # do not run the bundle's self-test
#
# Environment:
#   PYTHON           the Python whose environment is frozen (default: .venv/bin/python if present, else python3);
#                    it needs the app installed with its `hub` extra (the bundle carries datasets):
#                    pip install torch==2.13.0 -e '.[hub]'   (the CPU build of torch)
#   DEB_COMPRESSION  dpkg-deb compression, "zstd -z6" by default (see packaging/README.md for the measurements;
#                    xz or high zstd levels take minutes to tens of minutes on 2 cores for ~1 GB)
#   DEB_MAINTAINER   the Maintainer field
#
# Prints each phase's wall time and the sizes; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

skip_bundle=0
self_test=1
for arg in "$@"; do
  case "$arg" in
    --skip-bundle) skip_bundle=1 ;;
    --no-self-test) self_test=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PYINSTALLER_VERSION=6.22.3
DEB_COMPRESSION=${DEB_COMPRESSION:-zstd -z6}
DEB_MAINTAINER=${DEB_MAINTAINER:-DDPM Studio maintainers <ddpm-studio@example.org>}
VERSION=$(sed -n 's/^__version__ *= *"\([^"]*\)".*/\1/p' ddpm_gui/__init__.py)
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
BUNDLE=dist/ddpm-gui
DEB=dist/ddpm-gui_${VERSION}_${ARCH}.deb
export PIP_DISABLE_PIP_VERSION_CHECK=1

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }
step() { printf '\n== %s\n' "$*"; }
t_all=$(now)

# ------------------------------------------------------------------ 1. the bundle
if [ "$skip_bundle" = 0 ]; then
  step "checking the build environment ($PYTHON)"
  "$PYTHON" - <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit("torch is not installed in this environment: pip install torch==2.13.0 -e '.[hub]'")
if torch.version.cuda is not None:
    sys.exit(f"torch {torch.__version__} is a CUDA build: the bundle would be several GB. "
             "Install the CPU build (pip install torch==2.13.0 on Linux x86-64) in a separate environment.")
import importlib
for name in ("ddpm_gui", "datasets", "PySide6", "pyqtgraph"):  # everything the bundle must carry
    try:
        importlib.import_module(name)
    except ImportError as exc:
        sys.exit(f"{name} cannot be imported in this environment ({exc}): "
                 "pip install torch==2.13.0 -e '.[hub]' (the hub extra brings datasets)")
import ddpm_gui
print(f"ddpm_gui {ddpm_gui.__version__}, torch {torch.__version__} (CPU), Python {sys.version.split()[0]}")
EOF
  if ! "$PYTHON" -c "import PyInstaller, sys; sys.exit(PyInstaller.__version__ != '$PYINSTALLER_VERSION')" 2>/dev/null; then
    echo "installing pyinstaller==$PYINSTALLER_VERSION"
    "$PYTHON" -m pip install -q "pyinstaller==$PYINSTALLER_VERSION"
  fi

  step "PyInstaller: $BUNDLE/ (one folder)"
  t=$(now)
  rm -rf "$BUNDLE"
  "$PYTHON" -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
    packaging/ddpm-gui.spec
  echo "bundle built in $(since "$t") s"
fi
[ -x "$BUNDLE/ddpm-gui" ] || { echo "no bundle at $BUNDLE: run without --skip-bundle" >&2; exit 1; }

# Libraries the bundle expects from the system (PyInstaller leaves libc, libGL, libEGL... out on purpose).
step "system libraries the bundle links but does not carry"
missing=$(find "$BUNDLE/_internal" -name '*.so*' -type f -print0 \
  | LD_LIBRARY_PATH="$ROOT/$BUNDLE/_internal" xargs -0 ldd 2>/dev/null | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ' || true)
echo "not found on this machine: ${missing:-none}"
echo "(libwayland-*: only the Wayland platform plugin; Qt falls back to X11/XWayland without them)"

# ------------------------------------------------------------------ 2. its self-test
if [ "$self_test" = 1 ]; then
  step "bundle self-test: $BUNDLE/ddpm-gui --self-test"
  t=$(now)
  (cd /tmp && "$ROOT/$BUNDLE/ddpm-gui" --self-test)
  echo "bundle self-test took $(since "$t") s"
  if find "$BUNDLE" -name __pycache__ | grep -q .; then
    echo "the bundle wrote __pycache__ folders into itself: an installed copy would leave files behind" >&2
    exit 1
  fi
fi

# ------------------------------------------------------------------ 3. the .deb
step "Debian package: $DEB (compression: $DEB_COMPRESSION)"
t=$(now)
STAGE=build/deb/ddpm-gui_${VERSION}_${ARCH}
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications" \
  "$STAGE/usr/share/icons/hicolor/256x256/apps" "$STAGE/usr/share/icons/hicolor/scalable/apps" \
  "$STAGE/usr/share/doc/ddpm-gui"
# hard links, not a copy: the bundle is ~1 GB and the stage is thrown away
cp -al "$BUNDLE" "$STAGE/opt/ddpm-gui" 2>/dev/null || cp -a "$BUNDLE" "$STAGE/opt/ddpm-gui"
ln -s /opt/ddpm-gui/ddpm-gui "$STAGE/usr/bin/ddpm-gui"
install -m 644 resources/ddpm-gui.desktop "$STAGE/usr/share/applications/ddpm-gui.desktop"
install -m 644 resources/ddpm-gui.png "$STAGE/usr/share/icons/hicolor/256x256/apps/ddpm-gui.png"
install -m 644 resources/ddpm-gui.svg "$STAGE/usr/share/icons/hicolor/scalable/apps/ddpm-gui.svg"
cat > "$STAGE/usr/share/doc/ddpm-gui/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ddpm-gui (DDPM Studio)

Files: *
License: MIT
Comment: /opt/ddpm-gui bundles a Python interpreter and the
 libraries DDPM Studio runs on (PyTorch, Qt for Python, pyqtgraph, NumPy, Hugging Face datasets,
 PyArrow, Pillow and their dependencies) under their own licences; their license files are kept in
 /opt/ddpm-gui/_internal/*.dist-info where the packages ship them.
EOF
chmod -R u+rwX,go+rX,go-w "$STAGE"

# Depends: what Qt's xcb platform plugin and Qt GUI link (readelf NEEDED of libQt6XcbQpa, libqxcb,
# libQt6Gui), plus the C library version the bundle's binaries need. Qt 6 no longer links
# libxcb-xinerama. Of these, the bundle itself carries copies of everything but libc, libGL, libEGL
# and libxcb (PyInstaller leaves those out on purpose: they must match the system's X server and GPU
# driver); the rest are listed too: every X11 desktop has them, and they keep the package right should
# a later PyInstaller stop bundling them.
glibc=$(find "$BUNDLE" -type f \( -name '*.so*' -o -name ddpm-gui \) -print0 \
  | xargs -0 objdump -T 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1 || true)
depends="libc6 (>= ${glibc:-2.28}), libgl1, libegl1, libfontconfig1, libfreetype6, libglib2.0-0, libdbus-1-3, \
libx11-6, libx11-xcb1, libxcb1, libxcb-cursor0, libxcb-icccm4, libxcb-image0, libxcb-keysyms1, \
libxcb-randr0, libxcb-render0, libxcb-render-util0, libxcb-shape0, libxcb-shm0, libxcb-sync1, \
libxcb-util1, libxcb-xfixes0, libxcb-xkb1, libxkbcommon0, libxkbcommon-x11-0"
installed_kb=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<EOF
Package: ddpm-gui
Version: $VERSION
Architecture: $ARCH
Maintainer: $DEB_MAINTAINER
Installed-Size: $installed_kb
Depends: $depends
Recommends: libwayland-client0, libwayland-cursor0, libwayland-egl1
Section: science
Priority: optional
Description: DDPM Studio: train and explore denoising diffusion models
 A desktop application to train denoising diffusion models (DDPM) on small
 images and watch them work: the forward noising process and the reverse
 sampling process animated frame by frame, the loss falling live while a
 UNet trains on the CPU. Works offline on a built-in dataset of shapes;
 loads Hugging Face datasets, image folders and parquet files.
 .
 Self-contained: Python, PyTorch (CPU build) and Qt are inside
 /opt/ddpm-gui. Run "ddpm-gui --self-test" to check an installation.
EOF
# No maintainer scripts: the icon cache and the desktop database are refreshed by the dpkg triggers
# of hicolor-icon-theme and desktop-file-utils, and without a postrm `dpkg -r` leaves nothing behind.
comp=($DEB_COMPRESSION)
comp_type=${comp[0]}
comp_args=("-Z$comp_type" "${comp[@]:1}")
rm -f "$DEB"
dpkg-deb --root-owner-group "${comp_args[@]}" --build "$STAGE" "$DEB" >/dev/null
rm -rf "$STAGE"
echo ".deb built in $(since "$t") s"

# ------------------------------------------------------------------ summary
step "summary"
echo "bundle: $BUNDLE  $(du -sh "$BUNDLE" | cut -f1) unpacked ($(du -sb "$BUNDLE" | cut -f1) bytes, $(find "$BUNDLE" -type f | wc -l) files)"
echo ".deb:   $DEB  $(du -h "$DEB" | cut -f1) ($(stat -c %s "$DEB") bytes), Installed-Size $installed_kb KiB"
dpkg-deb --field "$DEB" Package Version Architecture Installed-Size | sed 's/^/        /'
echo "total build.sh time: $(since "$t_all") s"
