#!/usr/bin/env bash
# System packages the tests need: Xvfb and the X/Qt libraries napari renders with.
# Installs only what is missing; needs root (or sudo) the first time. Chromium (for the HTML
# report's screenshot test) is best effort: without it that one test skips, saying why.
set -euo pipefail
packages=(xvfb xauth libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
  libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0
  libxcb-cursor0 libdbus-1-3 libgl1 libegl1 libfontconfig1)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
optional=()
command -v chromium >/dev/null 2>&1 || optional+=(chromium)
[ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq || true
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ${#optional[@]} -gt 0 ]; then
  echo "installing (best effort) ${optional[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${optional[@]}" >/dev/null \
    || echo "could not install ${optional[*]}; the report screenshot test will skip"
fi
