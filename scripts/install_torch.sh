#!/usr/bin/env bash
# Install torch into a virtual environment, choosing the build for this machine (`make setup`).
#
#   scripts/install_torch.sh PYTHON SPEC [INDEX]
#
# INDEX given          -> that index only (TORCH_INDEX forces the CPU or a CUDA build).
# an NVIDIA GPU        -> pip's configured index (on PyPI: the CUDA build).
# no GPU               -> the CPU wheel index; when it cannot be reached, pip's configured index,
#                         but only if what it would install has no CUDA package (checked by a
#                         dry run before anything is downloaded, and by `pip list` afterwards).
set -euo pipefail

py=$1
spec=$2
index=${3:-}
cpu_index=https://download.pytorch.org/whl/cpu
cuda_re='^(nvidia-|cuda-|triton$)'  # the packages a CUDA build of torch pulls in

die() {
  echo "install_torch: $*" >&2
  exit 1
}

has_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }

reachable() {
  "$py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' \
    "$1/torch/" >/dev/null 2>&1
}

# names of the CUDA packages in a `pip install --report` file (what would be installed)
cuda_in_report() {
  "$py" -c 'import json, re, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower())' "$1" | grep -E "$cuda_re" || true
}

if [ -n "$index" ]; then
  echo "install_torch: $spec from TORCH_INDEX=$index"
  exec "$py" -m pip install --index-url "$index" "$spec"
fi

if has_gpu; then
  echo "install_torch: NVIDIA GPU found: $spec from pip's configured index (CUDA build)"
  exec "$py" -m pip install "$spec"
fi

if reachable "$cpu_index"; then
  echo "install_torch: no NVIDIA GPU: $spec from the CPU wheel index $cpu_index"
  "$py" -m pip install --index-url "$cpu_index" "$spec"
else
  echo "install_torch: no NVIDIA GPU and $cpu_index cannot be reached:" \
    "$spec from pip's configured index, if that has a CPU build"
  report=$(mktemp)
  trap 'rm -f "$report"' EXIT
  "$py" -m pip install --quiet --dry-run --report "$report" "$spec"
  cuda=$(cuda_in_report "$report")
  [ -z "$cuda" ] || die "pip's configured index offers only the CUDA build of $spec" \
    "(it would install: $(echo $cuda)). Installed nothing. On a CPU machine set" \
    "TORCH_INDEX to a CPU wheel index, or TORCH_INDEX=<a CUDA index> to force that build."
  "$py" -m pip install "$spec"
fi

cuda=$("$py" -m pip list --format=freeze | cut -d= -f1 | tr 'A-Z_' 'a-z-' | grep -E "$cuda_re" || true)
[ -z "$cuda" ] || die "CUDA packages installed on a machine without an NVIDIA GPU: $(echo $cuda)"
