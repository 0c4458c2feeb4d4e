#!/usr/bin/env bash
# The prepared GPU check, one command (in the GPU bundle: `./gpu_check.sh`):
#   1. `oodnc info` and the machine (GPU, driver, glibc, CPU count);
#   2. `oodnc selftest --device cuda` (training step, bf16 autocast, channels-last,
#      fused SGD, feature extraction, the KNN bank, every feature-based and
#      model-based detector on the GPU, checkpoint round trip, each against the CPU);
#   3. the training-step benchmark against PyTorch eager on the same device, in
#      bf16 autocast + channels-last and in plain fp32;
#   4. 2 epochs of the coursework recipe (ResNet-18, 100 classes, batch 128, the
#      300-epoch cosine schedule) on CIFAR-100 or on synthetic 100-class images
#      written in its format, and the projected 300-epoch time;
#   5. `oodnc bench ood` (each detector against pytorch-ood / numpy when present);
#   6. `oodnc bench ood-model` (ODIN, RankFeat, Gram and the noisy Mahalanobis on the
#      network, against pytorch-ood when present).
# Everything goes to one folder: the log, the run, the selftest and bench outputs.
#
#   scripts/gpu_check.sh [--quick] [OUT_DIR]      (default OUT_DIR: gpu-check/)
#
# --quick (meant to take under 4 minutes on an H100/H200): 10 timed steps, bf16 only; the
# 2 epochs on 10,000 + 2,000 images (5,000 of them train after the validation split; the
# projection uses the measured throughput); bench ood --quick and bench ood-model --quick.
# The full check (under 10 minutes there): 50 steps in both precisions, 2 epochs on
# 50,000 + 10,000 images, the full-size detector benchmark.
#
# Binary: OODNC_BIN, else ./oodnc beside this script (the bundle's launcher), else
# target/release/oodnc (a source checkout built on the GPU machine).
# A failing step is reported and the later steps still run; the exit status is
# the number of failed steps (0 = all passed).
set -uo pipefail
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
out=${1:-gpu-check}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${OODNC_BIN:-}" ]; then
  bin=$OODNC_BIN
elif [ -x "$here/oodnc" ]; then
  bin=$here/oodnc
else
  bin=target/release/oodnc
fi
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
failed=0
step() { # name, command...
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  echo "== $name"
  "$@"
  local rc=$?
  t1=$(date +%s.%N)
  local dt
  dt=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  if [ $rc -eq 0 ]; then
    echo "-- $name: ok in $dt s"
  else
    echo "-- $name: FAILED (exit $rc) after $dt s"
    failed=$((failed + 1))
  fi
}
started=$(date +%s)
echo "gpu_check $([ $quick = 1 ] && echo --quick) at $(date -u +%FT%TZ) -> $out (binary: $bin)"

machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  ldd --version 2>/dev/null | head -1
  echo "cpus: $(nproc)"
  "$bin" info
}
step "machine and oodnc info" machine
step "selftest on cuda" "$bin" selftest --device cuda

steps=50
[ $quick = 1 ] && steps=10
step "training step, bf16 autocast + channels-last: oodnc vs PyTorch eager" "$bin" bench train --steps "$steps"
if [ $quick = 0 ]; then
  step "training step, fp32: oodnc vs PyTorch eager" "$bin" bench train --steps "$steps" --precision fp32 --channels-last off
fi

if [ -f data/cifar-100-binary/train.bin ]; then
  root=data
  per_train=500
else
  per_train=500
  per_test=100
  if [ $quick = 1 ]; then
    per_train=100
    per_test=20
  fi
  root="$out/data-$per_train"
  if [ ! -f "$root/cifar-100-binary/train.bin" ]; then
    step "synthetic CIFAR-100-format data ($((per_train * 100)) + $((per_test * 100)) images)" \
      "$bin" data synth --root "$root" --classes 100 --train-per-class "$per_train" --test-per-class "$per_test"
  fi
fi
run_name=coursework-2ep-$(date +%Y%m%d-%H%M%S)
two_epochs() {
  # A new run folder for every check (nothing earlier is overwritten).
  "$bin" train --profile coursework --data-root "$root" --run "$run_name" --runs "$out/runs" --stop-after 2 || return $?
  # Epoch 1 includes cuDNN autotuning: project from the steady epoch 2's training throughput
  # onto the coursework's 45,000 training images (the synthetic sets may be smaller).
  awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { s[$col["epoch"]] = $col["seconds"]; ips[$col["epoch"]] = $col["images_per_s"] }
    END { printf "epoch 1: %.2f s, epoch 2: %.2f s (%.0f img/s); projected 300 epochs of CIFAR-100 (45,000 images): %.1f min (train passes only)\n",
          s[1], s[2], ips[2], 300 * 45000 / ips[2] / 60 }' "$out/runs/$run_name/history.csv"
}
step "2 epochs of the coursework recipe (data: $root)" two_epochs

if [ $quick = 1 ]; then
  step "detectors: oodnc vs pytorch-ood / numpy (quick sizes)" "$bin" bench ood --quick
  step "model-based detectors: oodnc vs pytorch-ood (width 0.25)" "$bin" bench ood-model --quick
else
  step "detectors: oodnc vs pytorch-ood / numpy (CIFAR-100 sizes)" "$bin" bench ood
  step "model-based detectors: oodnc vs pytorch-ood (the full ResNet-18)" "$bin" bench ood-model
fi

echo "gpu_check: $failed failed step(s), $(($(date +%s) - started)) s in total; log: $log"
exit $failed
