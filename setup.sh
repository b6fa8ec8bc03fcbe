#!/usr/bin/env bash
# Set up tanas_jax in ./.venv: the package (editable), its dependencies, and the real
# Fashion-MNIST data from Debian's package when this machine can install it.
#   ./setup.sh          runtime only
#   ./setup.sh --dev    + test tools (pytest, hypothesis, scipy, tensorflow-datasets)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: tanas_jax needs Python >= 3.11 ($PY is $("$PY" --version 2>&1)); set PYTHON=python3.11" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import tanas_jax, jax, flax, optax" || { echo "error: install failed" >&2; exit 1; }

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's dataset-fashion-mnist (real Fashion-MNIST, 30 MB)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
      >/dev/null 2>&1 || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tasks need it (or --data-dir)"
  else
    echo "note: Fashion-MNIST not found; run 'sudo apt-get install dataset-fashion-mnist' or pass --data-dir"
  fi
fi
echo "tanas_jax is set up in $(pwd)/.venv"
