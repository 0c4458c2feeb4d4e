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
