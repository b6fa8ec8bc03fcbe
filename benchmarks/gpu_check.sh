#!/usr/bin/env bash
# GPU smoke + throughput check, run on a machine with a CUDA jax (no pip install of the project:
# its jax pin is for CPU installs; the repo goes on PYTHONPATH).  Writes under ${OUT:-runs/gpu}.
# Pure-Python deps missing there can be carried as wheels in .whl/ (ml_collections, mlxtend).
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
B=$(mktemp -d)/bank
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
t() { local s=$(date +%s.%N); "$@"; local rc=$?; echo "[$(basename "$2") rc=$rc $(python3 -c "print(round($(date +%s.%N)-$s,1))") s]"; }
t python3 bin/train --task mnist_digit0,mnist_10way --net vgg16 --bank "$B" --set train.epochs=3 --no-progress --out "$OUT/train"
t python3 bin/distance --tasks mnist_digit0,mnist_10way,mnist_5class --set train.net=vgg16 --set train.epochs=3 --bank "$B" --metric logdet --no-progress --out "$OUT/dist_diag"
t python3 bin/distance --tasks mnist_digit0,mnist_10way,mnist_5class --set train.net=vgg16 --bank "$B" --metric frechet --spectrum full --no-progress --out "$OUT/dist_full"
t python3 bin/fuse --task mnist_10way --space from:task7 --bank "$B" --no-progress --out "$OUT/fuse"
t python3 bin/bench fuse --round --out "$OUT/bench_fuse"
t python3 bin/bench fisher --nets tanas_cnn,vgg16,resnet18 --examples 256 --microbatch 64 --repeats 3 --out "$OUT/bench_fisher"
