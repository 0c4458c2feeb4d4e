#!/usr/bin/env python3
"""Executes notebooks in order with nbclient and fails on any error.

Used by `make demo` (the six notebooks) and by the tests. For each notebook:
- runs every cell with the notebook's folder as the working directory (so
  `:dep oodnc = { path = "../oodnc-nb", package = "oodnc_nb" }` resolves), using the kernel named in the
  notebook (our `rust` kernel through JUPYTER_PATH, see the Makefile);
- prints one line per cell with its duration, so long runs show progress;
- writes the executed copy to --out (also when a cell fails, for inspection);
- fails if a cell raises, or if any output is of type "error";
- with --require-image, fails if the notebook has no image/png or image/svg+xml output.

Exit status: 0 when every notebook passed, 1 otherwise.
"""
import argparse
import os
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

IMAGE_TYPES = ("image/png", "image/svg+xml")


def error_outputs(nb):
    """(cell index, text) for every output of type 'error'."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                text = "\n".join(out.get("traceback", [])) or f"{out.get('ename')}: {out.get('evalue')}"
                found.append((i, text))
    return found


def image_outputs(nb):
    """Number of outputs carrying an image."""
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if any(t in data for t in IMAGE_TYPES):
                n += 1
    return n


def run_one(path, out_dir, timeout, kernel, require_image):
    nb = nbformat.read(path, as_version=4)
    name = os.path.basename(path)
    workdir = os.path.dirname(os.path.abspath(path))
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    started = {}

    def on_start(cell, cell_index, **_):
        started[cell_index] = time.time()

    def on_done(cell, cell_index, **_):
        k = code_cells.index(cell_index) + 1 if cell_index in code_cells else "?"
        dt = time.time() - started.get(cell_index, time.time())
        first = (cell.source.strip().splitlines() or [""])[0][:60]
        print(f"  [{name}] cell {k}/{len(code_cells)} {dt:7.1f}s  {first}", flush=True)

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel or nb.metadata.get("kernelspec", {}).get("name", "rust"),
        resources={"metadata": {"path": workdir}},
        on_cell_start=on_start,
        on_cell_executed=on_done,
        startup_timeout=300,
    )
    t0 = time.time()
    failure = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        failure = str(e)
    except Exception as e:  # kernel could not start, etc.
        failure = f"{type(e).__name__}: {e}"
    os.makedirs(out_dir, exist_ok=True)
    out_path = os.path.join(out_dir, name)
    nbformat.write(nb, out_path)
    errors = error_outputs(nb)
    images = image_outputs(nb)
    problems = []
    if failure:
        problems.append(failure)
    problems += [f"error output in cell {i}:\n{text}" for i, text in errors if not failure]
    if require_image and images == 0:
        problems.append("no image/png or image/svg+xml output")
    status = "FAILED" if problems else "ok"
    print(f"{name}: {status} in {time.time() - t0:.1f}s, {images} image output(s) -> {out_path}", flush=True)
    for p in problems:
        print("  " + p.replace("\n", "\n  "), file=sys.stderr)
    return not problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*")
    ap.add_argument("--out", default="build/notebooks", help="folder for executed copies")
    ap.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    ap.add_argument("--kernel", default=None, help="kernel name (default: the notebook's)")
    ap.add_argument("--require-image", action="store_true")
    args = ap.parse_args()
    if not args.notebooks:
        print("no notebooks to run (notebooks/0*.ipynb is empty)")
        return 0
    ok = True
    for path in args.notebooks:
        print(f"== {path}", flush=True)
        if not run_one(path, args.out, args.timeout, args.kernel, args.require_image):
            ok = False
            break  # later notebooks need the artefacts of earlier ones
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
