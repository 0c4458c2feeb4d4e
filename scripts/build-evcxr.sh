#!/usr/bin/env bash
# Builds the notebooks' Rust kernel: evcxr_jupyter VERSION from its published source
# packages with oodnc's patches (scripts/evcxr/*.patch), installed as ROOT/bin/evcxr_jupyter.
# `make setup` runs it once per machine (about 6 minutes on 2 cores); ROOT is keyed by the
# version and the patches, so a changed patch builds a new kernel beside the old one.
#
#   scripts/build-evcxr.sh VERSION ROOT
#
# The source packages come through cargo (`cargo fetch`: its registry, its mirrors, its
# checksums) and are checked against the SHA-256 pinned below; evcxr_jupyter is then built
# with its own published Cargo.lock (only the patched evcxr is taken from the local copy).
set -euo pipefail

version="${1:?usage: scripts/build-evcxr.sh VERSION ROOT}"
root="${2:?usage: scripts/build-evcxr.sh VERSION ROOT}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "$version" in
  0.22.0)
    sha_evcxr=ee69caeeefc311959b85962458e370d8eccb165123edbc5270134aaee6d7ed80
    sha_jupyter=3ce0d7b3058f68a9673df4f1266b641942fea0ec131881d095306e509a382764
    ;;
  *)
    echo "build-evcxr: no pinned checksums or patches for evcxr $version (scripts/build-evcxr.sh knows 0.22.0)" >&2
    exit 1
    ;;
esac

work="$(mktemp -d "${TMPDIR:-/tmp}/oodnc-evcxr.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. The two source packages. A manifest that depends on both makes `cargo fetch` download
#    them (evcxr_jupyter has no library; cargo downloads it and warns, which is expected).
mkdir -p "$work/fetch"
cat > "$work/fetch/Cargo.toml" <<EOF
[package]
name = "oodnc-evcxr-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
path = "lib.rs"

[dependencies]
evcxr = "=$version"
evcxr_jupyter = "=$version"
EOF
: > "$work/fetch/lib.rs"
if ! cargo fetch --manifest-path "$work/fetch/Cargo.toml" 2> "$work/fetch.log"; then
  cat "$work/fetch.log" >&2
  echo "build-evcxr: could not download evcxr $version through cargo (see above). Offline, put" >&2
  echo "  evcxr-$version.crate and evcxr_jupyter-$version.crate (from crates.io) under" >&2
  echo "  ${CARGO_HOME:-$HOME/.cargo}/registry/cache/index.crates.io-1949cf8c6b5b557f/ and run make setup again." >&2
  exit 1
fi
cache="${CARGO_HOME:-$HOME/.cargo}/registry/cache"
unpack() { # name sha256
  local f
  f="$(ls "$cache"/*/"$1-$version.crate" 2>/dev/null | head -n 1)"
  [[ -n "$f" ]] || { echo "build-evcxr: $1-$version.crate not found under $cache after cargo fetch" >&2; exit 1; }
  if ! echo "$2  $f" | sha256sum --check --status; then
    echo "build-evcxr: $f: SHA-256 is not the published one ($2); delete the file and run make setup again" >&2
    exit 1
  fi
  tar xzf "$f" -C "$work"
}
unpack evcxr "$sha_evcxr"
unpack evcxr_jupyter "$sha_jupyter"

# 2. oodnc's patches to evcxr; evcxr_jupyter takes that copy instead of the registry's.
#    With `patch` when the machine has it, else with git (which cloned this repository),
#    kept from looking for a repository above the unpacked source.
for p in "$repo"/scripts/evcxr/*.patch; do
  echo ">> evcxr $version: applying $(basename "$p")"
  if command -v patch >/dev/null 2>&1; then
    patch --quiet --forward -p1 -d "$work/evcxr-$version" < "$p"
  else
    (cd "$work/evcxr-$version" && GIT_CEILING_DIRECTORIES="$work" git apply -p1 "$p")
  fi
done
printf '\n[patch.crates-io]\nevcxr = { path = "../evcxr-%s" }\n' "$version" >> "$work/evcxr_jupyter-$version/Cargo.toml"

# 3. Build with the published lock file (cargo re-locks only the patched evcxr), install.
cargo build --release --bin evcxr_jupyter \
  --manifest-path "$work/evcxr_jupyter-$version/Cargo.toml" --target-dir "$work/target"
mkdir -p "$root/bin"
install -m 0755 "$work/target/release/evcxr_jupyter" "$root/bin/evcxr_jupyter.tmp.$$"
mv -f "$root/bin/evcxr_jupyter.tmp.$$" "$root/bin/evcxr_jupyter"
echo ">> evcxr_jupyter $version (oodnc's patches) installed in $root/bin"
