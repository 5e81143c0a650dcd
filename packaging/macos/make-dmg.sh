#!/usr/bin/env bash
# Build DDPM Studio for macOS: "dist/DDPM Studio.app" (the BUNDLE section of packaging/ddpm-gui.spec),
# its self-test, and dist/DDPM-Studio-<version>-<arch>.dmg (hdiutil). Run from anywhere, on macOS 11+
# (Apple silicon or Intel; the app is built for the machine's own architecture):
#
#   python3 -m venv .venv-mac
#   .venv-mac/bin/pip install torch==2.13.0 -e . pyinstaller==6.22.3
#   PYTHON=.venv-mac/bin/python packaging/macos/make-dmg.sh
#
# Signing (optional): CODESIGN_IDENTITY="Developer ID Application: ..." signs the app during the build
# (the spec passes it to PyInstaller); then notarize the .dmg:
#   xcrun notarytool submit dist/DDPM-Studio-*.dmg --keychain-profile <profile> --wait
#   xcrun stapler staple dist/DDPM-Studio-*.dmg
# Unsigned, the first start needs right-click > Open (Gatekeeper).
# NOT RUN on the Linux machine where this project is developed; see packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(uname -s)" = Darwin ] || { echo "make-dmg.sh runs on macOS (hdiutil, .app bundles)" >&2; exit 1; }
PYTHON=${PYTHON:-python3}
VERSION=$(sed -n 's/^__version__ *= *"\([^"]*\)".*/\1/p' ddpm_gui/__init__.py)
ARCH=$(uname -m)
APP="dist/DDPM Studio.app"
DMG="dist/DDPM-Studio-${VERSION}-${ARCH}.dmg"

t0=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/ddpm-gui.spec
echo "app built in $(( $(date +%s) - t0 )) s"

# the same self-test as on Linux, from inside the .app
"$APP/Contents/MacOS/ddpm-gui" --self-test

t1=$(date +%s)
STAGE=build/dmg
rm -rf "$STAGE" "$DMG"
mkdir -p "$STAGE"
cp -R "$APP" "$STAGE/"
ln -s /Applications "$STAGE/Applications"  # drag the app onto it
hdiutil create -volname "DDPM Studio" -srcfolder "$STAGE" -fs HFS+ -format UDZO -imagekey zlib-level=6 -ov "$DMG"
rm -rf "$STAGE"
echo "dmg built in $(( $(date +%s) - t1 )) s"
du -sh "$APP" "$DMG"
