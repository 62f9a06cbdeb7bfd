#!/usr/bin/env bash
# Install everything napari-unet and its tests need on a fresh Debian machine (root, no display):
# the Debian packages for Qt under a virtual X server, then this package with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
      libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libdbus-1-3 libfontconfig1)
missing=()
for deb in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
done
# Debian's own python3 comes without pip, and marks itself externally managed (PEP 668): pip refuses to install into
# it. On such a machine pip is installed from Debian and told to install into /usr/local (as root), which apt does not
# manage. A venv, pyenv or conda python3 on PATH is used as it is (a venv without pip gets it from ensurepip).
if ! python3 -m pip --version >/dev/null 2>&1 && ! python3 -m ensurepip --upgrade >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]; then
  export PIP_BREAK_SYSTEM_PACKAGES=1
fi
python3 -m pip install -q --disable-pip-version-check -e ".[test]"
