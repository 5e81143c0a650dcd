#!/usr/bin/env bash
# The packaged app, end to end, on a Debian/Ubuntu machine (as root, or with sudo):
#   build the bundle and the .deb (packaging/build.sh, which runs the bundle's self-test),
#   dpkg -i the .deb, run the installed /usr/bin/ddpm-gui --self-test, dpkg -r it, check nothing is left.
#
#   packaging/smoke.sh                # everything
#   packaging/smoke.sh --skip-build   # install/test/remove the .deb already in dist/
#
# Missing Depends are installed with apt-get (Debian's mirrors must be reachable then); a copy of
# ddpm-gui installed before is removed first. Prints each phase's time and the total.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

build=1
for arg in "$@"; do
  case "$arg" in
    --skip-build) build=0 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "smoke.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "smoke.sh installs a .deb: run it as root or install sudo" >&2; exit 1; }
  SUDO=sudo
fi
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }
t_all=$(now)
timings=()

if [ "$build" = 1 ]; then
  t=$(now)
  packaging/build.sh
  timings+=("build.sh (bundle, bundle self-test, .deb): $(since "$t") s")
fi

VERSION=$(sed -n 's/^__version__ *= *"\([^"]*\)".*/\1/p' ddpm_gui/__init__.py)
ARCH=$(dpkg --print-architecture)
DEB="$ROOT/dist/ddpm-gui_${VERSION}_${ARCH}.deb"
[ -f "$DEB" ] || { echo "no $DEB: run packaging/build.sh first" >&2; exit 1; }

# One smoke test at a time on this machine: two CI runs would install and remove the same package
# under each other (and the second dpkg would fail on dpkg's own lock).
LOCK=${DDPM_GUI_SMOKE_LOCK:-/tmp/ddpm-gui-smoke.lock}
exec 9>>"$LOCK"
if ! flock -n 9; then
  echo "waiting for another smoke test on this machine ($LOCK)"
  flock -w 1200 9 || { echo "smoke.sh: $LOCK still held after 20 minutes" >&2; exit 1; }
fi

installed() { dpkg-query -W -f='${Status}' ddpm-gui 2>/dev/null | grep -q 'install ok installed'; }
if dpkg-query -W ddpm-gui >/dev/null 2>&1; then
  echo "removing the ddpm-gui installed before"
  $SUDO dpkg --purge ddpm-gui >/dev/null
fi

printf '\n== dpkg -i %s\n' "$DEB"
t=$(now)
if ! $SUDO dpkg -i "$DEB"; then
  echo "installing the missing dependencies with apt-get"
  $SUDO apt-get install -f -y -q --no-install-recommends >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -f -y -q --no-install-recommends; }
fi
installed || { echo "ddpm-gui is not installed" >&2; exit 1; }
timings+=("dpkg -i: $(since "$t") s")

cleanup() { if installed; then $SUDO dpkg -r ddpm-gui >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

printf '\n== the installed app: /usr/bin/ddpm-gui\n'
[ -L /usr/bin/ddpm-gui ] && [ -x /opt/ddpm-gui/ddpm-gui ]
[ -f /usr/share/applications/ddpm-gui.desktop ] && [ -f /usr/share/icons/hicolor/256x256/apps/ddpm-gui.png ] \
  && [ -f /usr/share/icons/hicolor/scalable/apps/ddpm-gui.svg ]
if command -v desktop-file-validate >/dev/null 2>&1; then desktop-file-validate /usr/share/applications/ddpm-gui.desktop; fi
(cd /tmp && /usr/bin/ddpm-gui --version)
t=$(now)
(cd /tmp && env -u DDPM_GUI_CACHE -u HF_HOME -u HF_DATASETS_CACHE /usr/bin/ddpm-gui --self-test)
timings+=("installed ddpm-gui --self-test: $(since "$t") s")

printf '\n== dpkg -r ddpm-gui\n'
t=$(now)
$SUDO dpkg -r ddpm-gui
trap - EXIT
left=""
for p in /opt/ddpm-gui /usr/bin/ddpm-gui /usr/share/applications/ddpm-gui.desktop \
  /usr/share/icons/hicolor/256x256/apps/ddpm-gui.png /usr/share/icons/hicolor/scalable/apps/ddpm-gui.svg; do
  if [ -e "$p" ] || [ -L "$p" ]; then left="$left $p"; fi
done
[ -z "$left" ] || { echo "left behind after dpkg -r:$left" >&2; exit 1; }
if dpkg-query -W ddpm-gui >/dev/null 2>&1; then
  echo "dpkg still lists ddpm-gui after dpkg -r: $(dpkg-query -W -f='${Status}' ddpm-gui)" >&2
  exit 1
fi
timings+=("dpkg -r: $(since "$t") s")

printf '\n== smoke test passed\n'
for line in "${timings[@]}"; do echo "  $line"; done
echo "  total: $(since "$t_all") s (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
