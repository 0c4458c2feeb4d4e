#!/usr/bin/env bash
# Writes the torch 2.11 / tch 0.24 build variant of oodnc into a folder (default
# build/torch-2.11) from oodnc/Cargo.toml, so that it can never drift from the
# main manifest: same sources (linked, not copied), same dependencies and
# profiles, only tch / torch-sys 0.24.0 instead of 0.26.0, and LIBTORCH set to
# the torch 2.11.0 wheel extracted into the cache (headers and libraries only;
# used to compile and link, see the GPU bundle section of the README).
#
#   scripts/torch211_variant.sh [OUT_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/build/torch-2.11}
cache=${OODNC_CACHE:-$HOME/.cache/oodnc}
torch_dir=$cache/torch-2.11.0/site-packages/torch
if [ ! -f "$torch_dir/include/ATen/ops/_fused_sgd.h" ]; then
  echo "error: libtorch 2.11 not found at $torch_dir; run \`make torch211\` (downloads the torch==2.11.0 wheel, no deps)" >&2
  exit 1
fi
mkdir -p "$out"
for f in src csrc assets build.rs; do ln -sfn "$repo/oodnc/$f" "$out/$f"; done
{
  sed -e 's/^tch = "=0\.26\.0"/tch = "=0.24.0"/' \
      -e 's/^torch-sys = "=0\.26\.0"/torch-sys = "=0.24.0"/' \
      -e 's/^edition\.workspace = true/edition = "2021"/' \
      -e 's/^license\.workspace = true/license = "MIT OR Apache-2.0"/' \
      -e 's/^rust-version\.workspace = true/rust-version = "1.89"/' \
      "$repo/oodnc/Cargo.toml"
  echo
  echo '[workspace]'
  # The root manifest's profiles, so that dependencies built for the main
  # workspace are reused from the shared target folder.
  sed -n '/^\[profile/,$p' "$repo/Cargo.toml"
} > "$out/Cargo.toml.new"
grep -q '^tch = "=0.24.0"' "$out/Cargo.toml.new" || { echo "error: the tch pin in oodnc/Cargo.toml is not the expected =0.26.0" >&2; exit 1; }
mv "$out/Cargo.toml.new" "$out/Cargo.toml"
[ -f "$out/Cargo.lock" ] || cp "$repo/Cargo.lock" "$out/Cargo.lock"
mkdir -p "$out/.cargo"
cat > "$out/.cargo/config.toml" <<CFG
[env]
LIBTORCH = { value = "$torch_dir", force = true }
LD_LIBRARY_PATH = { value = "$torch_dir/lib", force = true }
OODNC_TCH_VERSION = "0.24.0"
OODNC_TORCH_VERSION = "2.11.0"
CFG
echo "$out"
