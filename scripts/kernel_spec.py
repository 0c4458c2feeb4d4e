#!/usr/bin/env python3
"""Writes this clone's Jupyter kernel spec for evcxr (kernel name "rust").

The spec lives in <repo>/.jupyter/kernels/rust/ and is found through
JUPYTER_PATH (set by the Makefile), so it wins over any other "rust" kernel
the user has installed. Its `env` carries everything the kernel needs:
libtorch for tch, Rust's own libstd for evcxr's cdylibs, cargo on PATH, and
the folder of persistent evcxr work dirs (one slot per running kernel, picked
by scripts/rust-kernel under flock) so later notebooks reuse the build cache.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--evcxr", required=True, help="path of evcxr_jupyter")
    ap.add_argument("--work", required=True, help="folder for persistent evcxr work dirs")
    ap.add_argument("--out", required=True, help="kernel.json to write")
    args = ap.parse_args()

    repo = os.path.abspath(args.repo)
    libtorch = os.path.join(repo, ".libtorch")
    if not os.path.isdir(os.path.join(libtorch, "lib")):
        print(f"error: {libtorch}/lib not found; run `make setup`", file=sys.stderr)
        return 1
    cargo = shutil.which("cargo")
    if cargo is None:
        print("error: cargo not found on PATH", file=sys.stderr)
        return 1
    rustlib = subprocess.run(
        ["rustc", "--print", "target-libdir"], check=True, capture_output=True, text=True
    ).stdout.strip()

    config_dir = os.path.join(repo, ".jupyter", "evcxr")
    os.makedirs(config_dir, exist_ok=True)
    # evcxr reads evcxr.toml from EVCXR_CONFIG_DIR. opt_level 0 is the level of each
    # cell's own code (a few lines: compiles fastest); oodnc and its dependencies are
    # built at opt-level 2 through the work dir's cargo config that scripts/rust-kernel
    # writes (OODNC_DEPS_OPT_LEVEL), which also keeps every cell's link small (README,
    # "Notebook cell latency").
    with open(os.path.join(config_dir, "evcxr.toml"), "w") as f:
        f.write('[evcxr]\nopt_level = "0"\n')

    spec = {
        "argv": ["bash", os.path.join(repo, "scripts", "rust-kernel"), "{connection_file}"],
        "display_name": "Rust (oodnc)",
        "language": "rust",
        "interrupt_mode": "message",
        "env": {
            "LIBTORCH": libtorch,
            "LD_LIBRARY_PATH": os.pathsep.join([os.path.join(libtorch, "lib"), rustlib]),
            "PATH": os.pathsep.join([os.path.dirname(cargo), os.environ.get("PATH", "/usr/bin:/bin")]),
            "EVCXR_CONFIG_DIR": config_dir,
            "OODNC_EVCXR_JUPYTER": os.path.abspath(args.evcxr),
            "OODNC_EVCXR_WORK": os.path.abspath(args.work),
            "OODNC_REPO": repo,
            "OODNC_PYTHON": os.path.join(repo, ".venv", "bin", "python"),
        },
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(spec, f, indent=1)
    os.replace(tmp, args.out)
    print(f"kernel spec written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
