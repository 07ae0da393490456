#!/usr/bin/env bash
# Install as a user on another machine would: a fresh clone and only the public package index
# (this machine's local wheel folders and pip settings hidden), then the README's demo command,
# then a plain `pip install .` into a second venv and `uptrack run` on the sample config.
# Usage: bash .ci/fresh-install-check.sh [WORK_DIR]   (downloads ~3 GB of torch/CUDA wheels)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
rm -rf "$work/uptrack"
git clone -q "$src" "$work/uptrack"
cd "$work/uptrack"
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT
echo "== make demo (public index only) =="
time make demo
echo "== pip install . (no constraints) =="
python3 -m venv "$work/plain"
"$work/plain/bin/python" -m pip install --quiet .
"$work/plain/bin/python" -m pip list 2>/dev/null | grep -i -E "^(torch|cellpose|numpy) "
du -sh "$work/plain" | awk '{print "plain environment size:", $1}'
"$work/plain/bin/uptrack" run configs/sample.yaml --set output.dir="$work/plain-results"
echo "fresh install check passed"
