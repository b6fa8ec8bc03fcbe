#!/usr/bin/env bash
# Install the PyTorch peers of `bin/bench fisher` (torch plain grad, torch.func, BackPACK, Opacus)
# into ./.venv, without letting pip pull a CUDA torch build or upgrade torch:
#   torch 2.13.0 (the CPU wheel when one lies in pip's find-links, as on this project's machines),
#   backpack-for-pytorch 1.7.1 --no-deps + einops and unfoldNd (it also declares torchvision,
#     which only its examples import: not installed),
#   opacus 1.6.0 --no-deps + numpy, scipy, opt-einsum (its other requirements),
# every step after the first constrained to the same torch.  An extra in pyproject.toml cannot
# say --no-deps, hence this script.
# Usage: benchmarks/install_peers.sh   (TORCH_VERSION=... to choose another torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "error: no .venv here; run ./setup.sh first" >&2; exit 2; }
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
pin=$(mktemp); trap 'rm -f "$pin"' EXIT
echo "torch==${TORCH_VERSION}" > "$pin"
pip_install() {   # quiet; drops pip's notes about absent local index folders
  "$PY" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
pip_install "torch==${TORCH_VERSION}"
pip_install --no-deps "backpack-for-pytorch==1.7.1"
pip_install -c "$pin" "einops>=0.3,<1" "unfoldNd>=0.2,<1"
pip_install --no-deps "opacus==1.6.0"
pip_install -c "$pin" "numpy>=1.15" "scipy>=1.2" "opt-einsum>=3.3.0"
"$PY" - <<'PY'
from importlib.metadata import version
import backpack, opacus, torch  # noqa: F401  (they import)
print("peers installed: " + ", ".join(f"{p} {version(p)}" for p in ("torch", "backpack-for-pytorch", "opacus")))
PY
