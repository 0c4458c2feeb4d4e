#!/usr/bin/env bash
# The GPU check of the training issue: the training-step benchmark against
# PyTorch eager (bf16 autocast + channels-last, and plain fp32), then 2 epochs of
# the coursework model (ResNet-18, 100 classes, batch 128, the 300-epoch cosine
# schedule) on CIFAR-100-shaped data, and the projected 300-epoch time.
#
#   scripts/gpu_check.sh [OUT_DIR]        (default: gpu-check/)
#
# Needs: a release `oodnc` built against a CUDA libtorch of the pinned version
# (`make setup && cargo build --release` on the GPU machine, or OODNC_BIN=...),
# and the venv's Python for the PyTorch baseline (OODNC_PYTHON=... otherwise).
# CIFAR-100 itself is used when data/cifar-100-binary exists; else 50,000 + 10,000
# synthetic 32x32 images of 100 classes are written in its format (same shapes,
# same work per epoch).
set -euo pipefail
out=${1:-gpu-check}
bin=${OODNC_BIN:-target/release/oodnc}
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1

"$bin" info
echo "== training step, batch 128: oodnc vs PyTorch eager on the same device"
"$bin" bench train --steps 50
"$bin" bench train --steps 50 --precision fp32 --channels-last off

if [ -f data/cifar-100-binary/train.bin ]; then
  root=data
else
  root="$out/data"
  [ -f "$root/cifar-100-binary/train.bin" ] ||
    "$bin" data synth --root "$root" --classes 100 --train-per-class 500 --test-per-class 100
fi
echo "== 2 epochs of the coursework recipe (data: $root)"
rm -rf "$out/runs/coursework-2ep"
t0=$(date +%s.%N)
"$bin" train --profile coursework --data-root "$root" --run coursework-2ep --runs "$out/runs" --stop-after 2
t1=$(date +%s.%N)
echo "wall clock of the 2-epoch command (data loading, 2 x (train + val + test), checkpoints): $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
# Epoch 1 includes cuDNN autotuning: project from the steady epoch 2.
awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  { s[$col["epoch"]] = $col["seconds"]; ips[$col["epoch"]] = $col["images_per_s"] }
  END { printf "epoch 1: %.2f s, epoch 2: %.2f s (%.0f img/s); projected 300 epochs: %.1f min (train passes only)\n",
        s[1], s[2], ips[2], 300 * s[2] / 60 }' "$out/runs/coursework-2ep/history.csv"
