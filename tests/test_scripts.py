"""The project's shell and Python scripts that no other test runs: they parse, and the
notebook export refuses a failed run and keeps every figure readable."""
import base64
import glob
import io
import os
import subprocess
import sys

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = os.path.join(REPO, "scripts", "export_notebooks.py")


@pytest.mark.parametrize("script", sorted(glob.glob(os.path.join(REPO, "scripts", "*.sh"))), ids=os.path.basename)
def test_shell_scripts_parse(script):
    res = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _executed(tmp_path, outputs):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("s.show(fig, \"x\")?")
    cell.execution_count = 1
    cell.outputs = outputs
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell]
    path = tmp_path / "in" / "01_t.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    return path


def _png(w=300, h=200):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    for i in range(0, w, 10):
        d.line([(i, 0), (w - i, h)], fill=(i % 255, 80, 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_export_keeps_figures_readable_and_not_larger(tmp_path):
    from PIL import Image

    png = _png()
    src = _executed(tmp_path, [nbformat.v4.new_output("display_data", data={"image/png": png})])
    res = subprocess.run([sys.executable, EXPORT, "--out", str(tmp_path / "out"), str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = nbformat.read(tmp_path / "out" / "01_t.ipynb", as_version=4)
    data = out.cells[1].outputs[0]["data"]["image/png"]
    assert len(data) <= len(png)
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    assert img.size == (300, 200)


def test_export_refuses_a_failed_or_unexecuted_run(tmp_path):
    err = nbformat.v4.new_output("error", ename="Error", evalue="boom", traceback=["boom"])
    src = _executed(tmp_path, [err])
    res = subprocess.run([sys.executable, EXPORT, "--out", str(tmp_path / "out"), str(src)], capture_output=True, text=True)
    assert res.returncode != 0 and "error output" in res.stderr and "make demo" in res.stderr, res.stderr
    assert not (tmp_path / "out" / "01_t.ipynb").exists()
    nb = nbformat.read(src, as_version=4)
    nb.cells[1].outputs = []
    nb.cells[1].execution_count = None
    nbformat.write(nb, src)
    res = subprocess.run([sys.executable, EXPORT, "--out", str(tmp_path / "out"), str(src)], capture_output=True, text=True)
    assert res.returncode != 0 and "not executed" in res.stderr, res.stderr


KERNEL = os.path.join(REPO, "scripts", "rust-kernel")
MARK = "# Written by oodnc's scripts/rust-kernel at every kernel start."


def _kernel(work, **env):
    """Runs scripts/rust-kernel with a stand-in for evcxr_jupyter (prints its slot)."""
    fake = work.parent / "fake-evcxr"
    fake.write_text('#!/bin/sh\necho "slot=$EVCXR_TMPDIR"\n')
    fake.chmod(0o755)
    full = dict(os.environ, OODNC_EVCXR_WORK=str(work), OODNC_EVCXR_JUPYTER=str(fake), **env)
    if "OODNC_DEPS_OPT_LEVEL" not in env:
        full.pop("OODNC_DEPS_OPT_LEVEL", None)
    return subprocess.run(["bash", KERNEL, "conn.json"], capture_output=True, text=True, env=full)


def test_rust_kernel_builds_notebook_dependencies_optimised(tmp_path):
    work = tmp_path / "work"
    res = _kernel(work)
    assert res.returncode == 0, res.stderr
    assert "slot=" + str(work / "slot-0") in res.stdout
    cfg = (work / ".cargo" / "config.toml").read_text()
    assert cfg.splitlines()[0] == MARK
    assert "[profile.dev.package.\"*\"]\nopt-level = 2\n" in cfg
    # A level chosen by the user replaces oodnc's own file; a bad one is refused.
    res = _kernel(work, OODNC_DEPS_OPT_LEVEL="0")
    assert res.returncode == 0, res.stderr
    assert "opt-level = 0" in (work / ".cargo" / "config.toml").read_text()
    res = _kernel(work, OODNC_DEPS_OPT_LEVEL="fast")
    assert res.returncode == 1 and "OODNC_DEPS_OPT_LEVEL=fast" in res.stderr


def test_rust_kernel_never_overwrites_a_cargo_config_it_did_not_write(tmp_path):
    work = tmp_path / "work"
    (work / ".cargo").mkdir(parents=True)
    mine = '[build]\njobs = 1\n'
    (work / ".cargo" / "config.toml").write_text(mine)
    res = _kernel(work)
    assert res.returncode == 1
    assert str(work / ".cargo" / "config.toml") in res.stderr and "not written by oodnc" in res.stderr
    assert (work / ".cargo" / "config.toml").read_text() == mine
    assert "slot=" not in res.stdout


def test_kernel_runs_evcxr_with_oodncs_patch():
    """make setup builds evcxr_jupyter from its published source with scripts/evcxr/*.patch
    (scripts/build-evcxr.sh); the kernel spec starts that build, not another evcxr_jupyter."""
    import json

    with open(os.path.join(REPO, ".jupyter", "kernels", "rust", "kernel.json")) as f:
        binary = json.load(f)["env"]["OODNC_EVCXR_JUPYTER"]
    assert "-oodnc-" in binary, binary
    with open(binary, "rb") as f:
        exe = f.read()
    # The patch's switch (read by the patched evcxr only) is compiled into the binary.
    assert b"EVCXR_PRIME_THREADS" in exe
    # Every patch applies to the pinned source and says what it does.
    for patch in glob.glob(os.path.join(REPO, "scripts", "evcxr", "*.patch")):
        with open(patch) as f:
            text = f.read()
        assert text.startswith("oodnc's patch to evcxr") and "\n--- a/src/" in text, patch
