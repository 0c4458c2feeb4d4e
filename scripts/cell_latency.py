#!/usr/bin/env python3
"""Notebook cell latency in the real kernel (evcxr through our kernel spec): `make bench-cells`.

Runs a notebook made of the one set-up cell every oodnc notebook starts with
(`:dep oodnc`, `use oodnc::prelude::*;`, `Session::new()`) followed by trivial
cells of the kinds the notebooks are made of (a `let`, a final expression shown
through Debug, a tensor op, a Markdown table through `s.show`), and reports:

- set-up: kernel start to the end of the set-up cell (the first output a student sees);
- per trivial cell: median and p90 of the wall time from execute request to reply.

Each evcxr setting is measured in the same run (a baseline in the same conditions):
- `shipped`: the evcxr.toml that `make setup` writes (.jupyter/evcxr/evcxr.toml)
  and the notebooks' set-up cell (oodnc through its shared-library facade oodnc-nb);
- `no-prime`: the same without oodnc's patch to evcxr (EVCXR_PRIME_THREADS=1: its
  rust-analyzer computes the crate graph's def maps lazily on one thread, as upstream);
- `deps-opt0`: the same with oodnc and its dependencies built at opt-level 0 in
  the kernel's work dir (OODNC_DEPS_OPT_LEVEL=0; the shipped kernel builds them at
  opt-level 2 and each cell at 0): the dylib then exports every generic instance
  (~270k dynamic symbols) that each cell's link and monomorphisation walk through;
- `direct-crate`: the same with `:dep` on the oodnc crate itself (each cell links
  the static libraries of its whole dependency graph);
- `evcxr-defaults`: evcxr's own defaults except the optimisation level (variables
  preserved on panic, dependencies linked statically into every cell);
- `no-preserve`: variables not preserved on panic (no extra build to tell whether
  a new variable's type is Copy).

Measured and dropped (see the README): dependencies built as shared libraries
(`allow_static_linking = false`) do not build with rustc 1.95 and evcxr 0.22
("only metadata stub found for `dylib` dependency `core`"); mold instead of the
toolchain's lld saved about 13 % of a cell's link time and needs a system package.

`--cold` uses a fresh evcxr work dir for each setting (the crate and its
dependencies compiled inside the kernel, as in a first notebook on a new clone);
without it each setting gets one untimed warm-up pass in its own persistent work
dir, then the timed pass. Output: a table on stdout and JSON (--json). The run is
named `cell-latency` (OODNC_RUN): its one table lands in figures/cell-latency/.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The set-up cell of the notebooks (oodnc through its shared-library facade,
# oodnc-nb) and, for comparison, the same with the crate itself (static rlibs).
SETUP = ':dep oodnc = { path = "%s", package = "oodnc_nb" }\nuse oodnc::prelude::*;\nlet s = Session::new()?;' % os.path.join(REPO, "oodnc-nb")
SETUP_DIRECT = ':dep oodnc = { path = "%s" }\nuse oodnc::prelude::*;\nlet s = Session::new()?;' % os.path.join(REPO, "oodnc")

TRIVIAL = [
    "let x = 1 + 1;",
    "x + 40",
    'println!("run folder: {}", s.run_dir.display());',
    "let v: Vec<f64> = (0..100).map(|i| i as f64).collect();",
    "v.len()",
    "let t = tch::Tensor::from_slice(&v).mean(tch::Kind::Double);",
    "t.double_value(&[])",
    's.show(String::from("| a | b |\\n|---|---|\\n| 1 | 2 |"), "cell_latency_table")?',
    "let y = x * 3;",
    'format!("{y} and {}", v[3])',
    "s.terminal_phase()",
    "let z = y + 1;",
]

# Rust-side work inside a cell (not counted as trivial): a KNN fit and score and five
# AUROC/FPR computations, timed inside the cell; run twice after the trivial cells.
WORK = r'''{
use oodnc::features::FeatureSet;
use oodnc::ood::{ood_metrics, FitData, DetectorSpec};
use oodnc::tch::{Device, Kind, Tensor};
let t0 = std::time::Instant::now();
oodnc::tch::manual_seed(0);
let (n, d, c, m) = (20000i64, 128i64, 10i64, 5000i64);
let f = (Kind::Float, Device::Cpu);
let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(c);
let h = Tensor::randn([n, d], f).relu();
let w = Tensor::randn([c, d], f);
let b = Tensor::zeros([c], f);
let train = FeatureSet::new("train", h.matmul(&w.tr()), h.shallow_clone(), y)?;
let th = Tensor::randn([m, d], f).relu();
let test = FeatureSet::new("test", th.matmul(&w.tr()), th.shallow_clone(), Tensor::zeros([m], (Kind::Int64, Device::Cpu)))?;
let data = FitData::new(&train, None, &w, &b);
let knn = DetectorSpec::new("knn", &[("k", 50.0)])?.fit(&data)?.score_vec(&test)?;
let t1 = t0.elapsed().as_secs_f64();
let xs: Vec<f64> = (0..400000u64).map(|i| ((i * 7919) % 1000003) as f64).collect();
let mut auc = 0.0;
for _ in 0..5 { auc += ood_metrics(&xs[..200000], &xs[200000..])?.auroc; }
let t2 = t0.elapsed().as_secs_f64() - t1;
format!("knn fit+score {:.2} s, 5x ood_metrics(200k vs 200k) {:.2} s [{} {:.3}]", t1, t2, knn.len(), auc)
}'''


# name: (evcxr.toml text or None for the shipped one, whether dependencies are built
# differently from the shipped setting, so that a warm run needs a work dir of its own,
# the set-up cell, extra kernel environment)
SETTINGS = {
    "shipped": (None, False, SETUP, {}),
    "no-prime": (None, False, SETUP, {"EVCXR_PRIME_THREADS": "1"}),
    "deps-opt0": (None, True, SETUP, {"OODNC_DEPS_OPT_LEVEL": "0"}),
    "direct-crate": (None, False, SETUP_DIRECT, {}),
    "evcxr-defaults": ('[evcxr]\nopt_level = "0"\npreserve_vars_on_panic = true\nallow_static_linking = true\n', False, SETUP, {}),
    "no-preserve": ('[evcxr]\nopt_level = "0"\npreserve_vars_on_panic = false\nallow_static_linking = true\n', False, SETUP, {}),
}


def make_notebook(setup):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "rust", "display_name": "Rust (oodnc)", "language": "rust"}
    nb.cells = [nbformat.v4.new_code_cell(setup)] + [nbformat.v4.new_code_cell(c) for c in TRIVIAL + [WORK, WORK]]
    return nb


def kernel_spec(tmp, name, work, config_text, env=None):
    """A copy of this clone's kernel spec under tmp/kernels/<name>, with its own evcxr
    work dir, extra environment `env` and, when config_text is given, its own evcxr.toml."""
    src = os.path.join(REPO, ".jupyter", "kernels", "rust", "kernel.json")
    if not os.path.exists(src):
        sys.exit(f"error: {src} missing; run `make setup` first")
    with open(src) as f:
        spec = json.load(f)
    spec["env"]["OODNC_EVCXR_WORK"] = work
    spec["env"].update(env or {})
    if config_text is not None:
        cfg = os.path.join(tmp, "config-" + name)
        os.makedirs(cfg, exist_ok=True)
        with open(os.path.join(cfg, "evcxr.toml"), "w") as f:
            f.write(config_text)
        spec["env"]["EVCXR_CONFIG_DIR"] = cfg
    d = os.path.join(tmp, "kernels", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "kernel.json"), "w") as f:
        json.dump(spec, f)
    return name


def run_once(kernel, workdir, timeout, setup):
    """(set-up seconds from kernel start, [seconds per trivial cell])."""
    nb = make_notebook(setup)
    started, took = {}, {}
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel,
        resources={"metadata": {"path": workdir}},
        on_cell_start=lambda cell, cell_index, **_: started.__setitem__(cell_index, time.perf_counter()),
        on_cell_executed=lambda cell, cell_index, **_: took.__setitem__(cell_index, time.perf_counter() - started[cell_index]),
        startup_timeout=300,
    )
    t0 = time.perf_counter()
    with client.setup_kernel():
        boot = time.perf_counter() - t0
        for i, cell in enumerate(nb.cells):
            try:
                client.execute_cell(cell, i)
            except CellExecutionError:
                text = "\n".join(o.get("text", "") or "\n".join(o.get("traceback", [])) for o in cell.get("outputs", []))
                sys.exit(f"error: cell {i} failed in kernel {kernel}:\n{cell.source}\n--- its output:\n{text[-4000:]}")
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        sys.exit("error: a latency cell failed:\n" + "\n".join(e.get("evalue", "") for e in errors))
    n = 1 + len(TRIVIAL)
    work = [str(o.get("data", {}).get("text/plain", "")).strip('"') for c in nb.cells[n:] for o in c.get("outputs", [])]
    return boot + took[0], [took[i] for i in range(1, n)], work


def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", action="store_true", help="fresh evcxr work dirs (minutes per setting)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: " + ", ".join(SETTINGS))
    ap.add_argument("--timeout", type=int, default=1800, help="per-cell timeout (s)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        sys.exit(f"error: unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")

    spec_path = os.path.join(REPO, ".jupyter", "kernels", "rust", "kernel.json")
    if not os.path.exists(spec_path):
        sys.exit(f"error: {spec_path} missing; run `make setup` first")
    with open(spec_path) as f:
        shared_work = json.load(f)["env"]["OODNC_EVCXR_WORK"]
    tmp = tempfile.mkdtemp(prefix="oodnc-cell-latency-")
    os.environ["JUPYTER_PATH"] = tmp  # our temporary kernel specs only
    os.environ.setdefault("OODNC_RUN", "cell-latency")
    workdir = os.path.join(REPO, "notebooks")
    results = {}
    try:
        for name in names:
            # Warm: the kernel's own persistent work dir (the settings compared change
            # nothing in how dependencies are built, so they share its build cache);
            # cold: a fresh one inside tmp, removed at the end.
            config_text, own_build, setup, env = SETTINGS[name]
            if args.cold:
                work = os.path.join(tmp, "work-" + name)
            elif own_build:
                work = os.path.join(os.path.dirname(shared_work), "latency-" + name)
            else:
                work = shared_work
            kernel = kernel_spec(tmp, "lat-" + name, work, config_text, env)
            if not args.cold:
                print(f"[{name}] warm-up pass (untimed; compiles oodnc in the kernel's work dir if it is not built yet)", flush=True)
                run_once(kernel, workdir, args.timeout, setup)
            print(f"[{name}] timed pass", flush=True)
            setup_s, cells, work_out = run_once(kernel, workdir, args.timeout, setup)
            results[name] = {
                "mode": "cold" if args.cold else "warm",
                "setup_s": setup_s,
                "cell_median_s": statistics.median(cells),
                "cell_p90_s": p90(cells),
                "cells_s": cells,
                "work": work_out,
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mode = "cold" if args.cold else "warm"
    print(f"\ncell latency ({mode}; {len(TRIVIAL)} trivial cells after the set-up cell; {os.cpu_count()} cores)")
    print(f"{'setting':<16} {'set-up (first output)':>22} {'median cell':>12} {'p90 cell':>9}")
    for name, r in results.items():
        print(f"{name:<16} {r['setup_s']:>20.1f} s {r['cell_median_s']:>10.2f} s {r['cell_p90_s']:>7.2f} s")
    print("Rust-side work in a cell (KNN 20000x128 train / 5000 test; 5 AUROC/FPR on 200k + 200k scores), twice:")
    for name, r in results.items():
        print(f"  {name:<16} " + "; ".join(r["work"]))
    if "evcxr-defaults" in results:
        b = results["evcxr-defaults"]
        for name, a in results.items():
            if name != "evcxr-defaults":
                print(
                    f"{name} against evcxr's defaults, same run: median cell {b['cell_median_s'] / a['cell_median_s']:.2f}x faster, "
                    f"set-up {b['setup_s'] / a['setup_s']:.2f}x"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
