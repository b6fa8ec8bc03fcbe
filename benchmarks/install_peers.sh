#!/usr/bin/env bash
# Install the PyTorch peers of `bin/bench fisher` (torch plain grad, torch.func, BackPACK, Opacus)
# into ./.venv, without letting pip pull a CUDA torch build or upgrade torch:
#   torch 2.13.0 (the CPU wheel when one lies in pip's find-links), then
#   backpack-for-pytorch 1.7.1 --no-deps + its einops and unfoldNd,
#   opacus 1.6.0 --no-deps + its numpy/scipy/opt_einsum (torch pinned through a constraints file).
# Usage: benchmarks/install_peers.sh   (from anywhere; TORCH_VERSION=... to choose another torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "error: no .venv here; run ./setup.sh first" >&2; exit 2; }
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PIP=("$PY" -m pip install -q --disable-pip-version-check)
# backpack-for-pytorch declares torchvision, but only its examples import it: it is not installed.
pin=$(mktemp); trap 'rm -f "$pin"' EXIT
echo "torch==${TORCH_VERSION}" > "$pin"            # every later step keeps this torch
"${PIP[@]}" "torch==${TORCH_VERSION}"
"${PIP[@]}" --no-deps "backpack-for-pytorch==1.7.1"
"${PIP[@]}" -c "$pin" "einops>=0.8,<1" "unfoldNd>=0.2,<1"
"${PIP[@]}" --no-deps "opacus==1.6.0"
"${PIP[@]}" -c "$pin" "numpy>=1.15" "scipy>=1.2" "opt-einsum>=3.3.0"
"$PY" - <<'PY'
from importlib.metadata import version
import backpack, opacus, torch  # noqa: F401  (they import)
print("peers installed: " + ", ".join(f"{p} {version(p)}" for p in ("torch", "backpack-for-pytorch", "opacus")))
PY
