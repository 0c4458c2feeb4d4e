#!/usr/bin/env bash
# Checks on the CPU that the torch 2.11 build variant (`make gpu-variant`), loading
# the torch 2.11.0 wheel's libraries, gives the same ci-profile results as the
# main build loading the main venv's torch 2.13: train, ood, nc on both, then
# every table and every checkpoint tensor compared.
#
#   scripts/variant_check.sh VARIANT_BIN MAIN_BIN [OUT_DIR]
#
# (Both binaries are called `oodnc` in the shared target/: copy the variant's
# aside after `make gpu-variant`, before the next main build re-links it.)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
variant=$1 main=$2 out=${3:-$repo/build/variant-check}
lib211=${OODNC_CACHE:-$HOME/.cache/oodnc}/torch-2.11.0/site-packages/torch/lib
mkdir -p "$out"
run() { # NAME BIN LIBDIR
  local runs=$out/$1
  [ ! -e "$runs" ] || { echo "error: $runs exists; give another OUT_DIR or remove it" >&2; exit 1; }
  LD_LIBRARY_PATH=$3 "$2" info | sed -n 2,3p
  LD_LIBRARY_PATH=$3 "$2" train --profile ci --run c --runs "$runs" >/dev/null
  LD_LIBRARY_PATH=$3 "$2" ood --run c --runs "$runs" --epochs last --bootstrap 0 --detectors all,model >/dev/null
  LD_LIBRARY_PATH=$3 "$2" nc --run c --runs "$runs" --epochs all >/dev/null
}
run torch211 "$variant" "$lib211"
run torch213 "$main" "$repo/.libtorch/lib"
a=$out/torch211/c b=$out/torch213/c
diff <(cut -d, -f1-7 "$a/history.csv") <(cut -d, -f1-7 "$b/history.csv") && echo "history.csv: identical (timing columns aside)"
for f in ood/metrics.csv ood/significance.csv nc/metrics.csv; do cmp "$a/$f" "$b/$f" && echo "$f: identical"; done
"$repo/.venv/bin/python" - "$a" "$b" <<'PY'
import glob, os, sys
from safetensors.numpy import load_file
a, b = sys.argv[1:]
files = sorted(glob.glob(os.path.join(a, "checkpoints", "*.safetensors")))
bad = [f for f in files if (x := load_file(f)).keys() != (y := load_file(f.replace(a, b))).keys()
       or any((x[k] != y[k]).any() for k in x)]
print(f"checkpoints: {len(files) - len(bad)}/{len(files)} files identical in every tensor")
sys.exit(1 if bad or not files else 0)
PY
