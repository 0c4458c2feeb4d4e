#!/usr/bin/env bash
# Builds the GPU bundle (`make gpu-bundle`): the torch 2.11 / tch 0.24 release build of
# oodnc, stripped, with a launcher that runs it on the libraries of the machine's own
# PyTorch 2.11, the check script, and the Python baselines. Nothing in it needs the
# network. Fails when the folder exceeds 64 MiB (what can be carried to the GPU machine).
#
#   scripts/gpu_bundle.sh [OUT_DIR]        (default: build/gpu-bundle)
#
# OUT_DIR is replaced only when it is a bundle this script wrote (it holds the marker
# file .oodnc-gpu-bundle) or does not exist.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/build/gpu-bundle}
limit=$((64 * 1024 * 1024))
if [ -e "$out" ] && [ ! -f "$out/.oodnc-gpu-bundle" ]; then
  echo "error: $out exists and is not a bundle written by gpu_bundle.sh; choose another folder" >&2
  exit 1
fi
variant=$repo/build/torch-2.11
"$repo/scripts/torch211_variant.sh" "$variant" >/dev/null
echo ">> release build of the torch 2.11 variant (shared target folder; the first build compiles every dependency)"
(cd "$variant" && CARGO_TARGET_DIR="$repo/target" cargo build --release --bin oodnc)
tmp="$out.tmp.$$"
mkdir -p "$tmp/bin" "$tmp/python"
# Copied at once: the next main release build re-links target/release/oodnc.
cp "$repo/target/release/oodnc" "$tmp/bin/oodnc"
strip "$tmp/bin/oodnc"
cp "$repo/python/torch_resnet.py" "$repo/python/ood_numpy.py" "$repo/python/ood_peer.py" "$repo/python/model_peer.py" "$tmp/python/"
cp "$repo/scripts/gpu_check.sh" "$tmp/gpu_check.sh"
cat > "$tmp/oodnc" <<'LAUNCHER'
#!/usr/bin/env bash
# Runs the bundled oodnc (built against libtorch 2.11) on this machine's own PyTorch
# 2.11 libraries. OODNC_TORCH_LIB=<.../torch/lib> overrides the folder; OODNC_PYTHON
# names the Python whose torch is used (default: python3), also for the baselines.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${OODNC_PYTHON:-$(command -v python3 || true)}
if [ -n "${OODNC_TORCH_LIB:-}" ]; then
  lib=$OODNC_TORCH_LIB
else
  if [ -z "$py" ]; then
    echo "oodnc bundle: no python3 on PATH; set OODNC_PYTHON to a Python with torch 2.11.0, or OODNC_TORCH_LIB to its torch/lib folder" >&2
    exit 2
  fi
  found=$("$py" -c 'import torch; print(torch.__path__[0]); print(torch.__version__.split("+")[0])' 2>/dev/null) || {
    echo "oodnc bundle: $py cannot import torch; set OODNC_PYTHON to a Python with torch 2.11.0, or OODNC_TORCH_LIB to its torch/lib folder" >&2
    exit 2
  }
  tdir=$(sed -n 1p <<<"$found")
  ver=$(sed -n 2p <<<"$found")
  if [ "$ver" != "2.11.0" ]; then
    echo "oodnc bundle: built for torch 2.11.0, but $py has torch $ver ($tdir); use a Python with torch 2.11.0, or build oodnc from source for $ver" >&2
    exit 2
  fi
  lib=$tdir/lib
fi
if [ ! -f "$lib/libtorch_cpu.so" ]; then
  echo "oodnc bundle: $lib/libtorch_cpu.so not found (OODNC_TORCH_LIB / the torch install)" >&2
  exit 2
fi
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OODNC_PYTHON_DIR="$here/python"
[ -n "$py" ] && export OODNC_PYTHON="$py"
exec "$here/bin/oodnc" "$@"
LAUNCHER
chmod +x "$tmp/oodnc" "$tmp/gpu_check.sh"
cat > "$tmp/README.txt" <<'README'
oodnc GPU bundle (tch 0.24 / libtorch 2.11; runs on a machine whose Python has torch 2.11.0)

  ./oodnc info                      versions, the libtorch in use, CUDA
  ./oodnc selftest --device cuda    the device checks, one PASS/FAIL line each
  ./gpu_check.sh --quick OUT        the GPU check in under 4 minutes (OUT/gpu_check.log)
  ./gpu_check.sh OUT                the full check (under 10 minutes on an H100/H200)

The launcher finds torch through `python3 -c 'import torch'` (OODNC_PYTHON to choose
another Python, OODNC_TORCH_LIB to name the torch/lib folder directly).
README
glibc=$(objdump -T "$tmp/bin/oodnc" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
echo "The binary needs ${glibc/_/ } or newer (from its symbol versions; the check prints the machine's)." >> "$tmp/README.txt"
git -C "$repo" rev-parse HEAD > "$tmp/COMMIT" 2>/dev/null || true
touch "$tmp/.oodnc-gpu-bundle"
size=$(du -sb "$tmp" | cut -f1)
if [ "$size" -gt "$limit" ]; then
  echo "error: the bundle is $((size / 1024 / 1024)) MiB, over the 64 MiB limit ($tmp left for inspection)" >&2
  exit 1
fi
if [ -e "$out" ]; then
  rm -rf "$out"
fi
mv "$tmp" "$out"
echo "gpu bundle: $out, $(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }') MiB (limit 64 MiB)"
ls -la "$out"
