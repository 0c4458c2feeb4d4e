"""Notebook tests: the runner, the kernel spec, the crate inside evcxr.

These execute real notebooks with our `rust` kernel (evcxr), so the first run
on a machine compiles tch and the crate inside evcxr's work dir (minutes);
later runs reuse that build cache.
"""
import json
import os
import subprocess
import sys

import nbformat
import pytest

from nbtools import rust_notebook

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "scripts", "run_notebooks.py")
SMOKE = os.path.join(REPO, "tests", "notebooks", "smoke.ipynb")


def run(notebooks, out, *extra):
    return subprocess.run(
        [sys.executable, RUNNER, "--out", str(out), "--timeout", "1800", *extra, *map(str, notebooks)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_kernel_spec_is_ours():
    spec_path = os.path.join(REPO, ".jupyter", "kernels", "rust", "kernel.json")
    with open(spec_path) as f:
        spec = json.load(f)
    assert spec["argv"][1].endswith("scripts/rust-kernel")
    env = spec["env"]
    assert os.path.isdir(os.path.join(env["LIBTORCH"], "lib"))
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == os.path.join(env["LIBTORCH"], "lib")
    assert os.path.isdir(env["OODNC_EVCXR_WORK"]) or not os.path.exists(env["OODNC_EVCXR_WORK"])
    # JUPYTER_PATH (set by the Makefile) makes this spec the one named "rust".
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager().find_kernel_specs()["rust"]
    assert os.path.realpath(found) == os.path.realpath(os.path.dirname(spec_path))


def test_smoke_notebook_runs_crate_tch_and_inline_figure(tmp_path):
    res = run([SMOKE], tmp_path, "--require-image")
    assert res.returncode == 0, res.stdout + res.stderr
    nb = nbformat.read(tmp_path / "smoke.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    text += "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "tch" in text and "libtorch" in text, text
    assert "14" in text  # the tch op: sum of squares of [1, 2, 3]
    # generic tch calls instantiated by the cell itself load (oodnc-nb exports libtch)
    assert "u8 sum 6, f32 cumsum 2" in text
    # the kernel's oodnc has no `parquet` feature: refused with a typed error, CSV works
    assert "parquet refused, csv rows 1" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_runner_fails_on_a_cell_error(tmp_path):
    nb = rust_notebook(['let x: i32 = 1;', 'let y: u8 = "not a number";', 'println!("never");'])
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    res = run([path], tmp_path / "out")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAILED" in res.stdout
    # The executed copy is still written, for inspection.
    assert (tmp_path / "out" / "broken.ipynb").exists()


def test_runner_fails_without_required_image(tmp_path):
    nb = rust_notebook(['println!("no figure here");'])
    path = tmp_path / "noimage.ipynb"
    nbformat.write(nb, path)
    res = run([path], tmp_path / "out", "--require-image")
    assert res.returncode == 1
    assert "no image" in res.stderr


def test_the_six_notebooks_run_on_the_ci_profile(tmp_path):
    """The six notebooks in order, CI size: no error output and an inline figure in each."""
    import shutil

    run = "ci-nbtest"
    shutil.rmtree(os.path.join(REPO, "runs", run), ignore_errors=True)
    shutil.rmtree(os.path.join(REPO, "figures", run), ignore_errors=True)
    shutil.rmtree(os.path.join(REPO, "runs", run + "-bottleneck4"), ignore_errors=True)
    shutil.rmtree(os.path.join(REPO, "figures", run + "-bottleneck4"), ignore_errors=True)
    notebooks = sorted(
        os.path.join(REPO, "notebooks", n) for n in os.listdir(os.path.join(REPO, "notebooks")) if n.endswith(".ipynb")
    )
    assert [os.path.basename(n)[:2] for n in notebooks] == ["01", "02", "03", "04", "05", "06"]
    env = dict(os.environ, OODNC_PROFILE="ci", OODNC_RUN=run)
    res = subprocess.run(
        [sys.executable, RUNNER, "--out", str(tmp_path), "--timeout", "1800", "--require-image", *notebooks],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    for n in notebooks:
        nb = nbformat.read(tmp_path / os.path.basename(n), as_version=4)
        outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outs if o.get("output_type") == "error"], n
        assert any("image/png" in o.get("data", {}) for o in outs), n
        # A shown figure or table that fell back to its Debug form means evcxr could not call evcxr_display.
        plain = ["".join(o.get("data", {}).get("text/plain", "")) for o in outs]
        assert not [p for p in plain if p.startswith("Shown::") or p == "()"], (n, plain)
    # Artefacts of every stage exist.
    rd = os.path.join(REPO, "runs", run)
    for f in ["config.toml", "history.csv", "ood/metrics.csv", "ood/selection.json", "nc/metrics.csv", "nc/layers.csv",
              "interp/layers.csv", "interp/ablation.csv"]:
        assert os.path.exists(os.path.join(rd, f)), f
    # Notebook 06's bottleneck run: a sibling run whose penultimate feature is 4-dimensional.
    with open(os.path.join(REPO, "runs", run + "-bottleneck4", "config.toml")) as f:
        assert "bottleneck = 4" in f.read()
    assert os.path.exists(os.path.join(REPO, "runs", run + "-bottleneck4", "interp", "layers.csv"))
    figs = os.listdir(os.path.join(REPO, "figures", run))
    assert "training_curves.png" in figs and "nc_evolution_all.svg" in figs and "nc_by_layer.png" in figs
    assert "interp_by_layer.png" in figs and "interp_ablation.png" in figs and "interp_bottleneck_vs_main.png" in figs
    # Session::show saves tables for the report too (Markdown), next to the figures.
    for t in ["ood_table.md", "ood_protocols.md", "nc_by_epoch.md", "nc5_vs_neco.md", "nc_layers_table.md", "interp_layers_test.md"]:
        assert t in figs, t
    with open(os.path.join(REPO, "figures", run, "ood_table.md")) as f:
        assert any(line.startswith("| ") for line in f.read().splitlines()), "ood_table.md holds a Markdown table"
    # Notebook 02's model-based detectors: their table, and their rows merged into the run's metrics.
    assert "model_based_table.md" in figs
    with open(os.path.join(rd, "ood", "metrics.csv")) as f:
        detectors = {line.split(",")[2] for line in f.read().splitlines()[1:] if line.count(",") > 3}
    assert {"odin", "iodin", "rankfeat", "gram", "mahalanobis_noise", "nac", "adascale_a", "adascale_l", "vim"} <= detectors, sorted(detectors)
    assert "bottleneck_vs_main_nc.md" in os.listdir(os.path.join(REPO, "figures", run + "-bottleneck4"))
