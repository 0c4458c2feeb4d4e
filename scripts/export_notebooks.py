#!/usr/bin/env python3
"""Copies executed notebooks (from `make demo`, build/notebooks/) to docs/notebooks/ for
readers on the web: every output kept, PNG figures re-encoded with a 256-colour
palette when that makes them smaller (plots have few colours; the loss is invisible),
kernel noise (execution timing metadata) removed. `make docs-notebooks` runs it.

Refuses to export a notebook that has an error output or was not fully executed, so
the pages never show a failed run. Prints each notebook's size before and after.
"""
import argparse
import base64
import io
import os
import sys

import nbformat

try:
    from PIL import Image
except ImportError:  # pillow comes with the venv (torchvision); without it PNGs are copied as they are
    Image = None


def shrink_png(b64):
    """A smaller base64 PNG of the same picture, or the input when not smaller."""
    if Image is None:
        return b64
    raw = base64.b64decode(b64)
    img = Image.open(io.BytesIO(raw))
    if img.mode not in ("RGB", "RGBA", "L", "P"):
        return b64
    out = io.BytesIO()
    q = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    q.save(out, format="PNG", optimize=True)
    small = out.getvalue()
    return base64.b64encode(small).decode("ascii") if len(small) < len(raw) else b64


def export(src, dst):
    nb = nbformat.read(src, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None and cell.source.strip():
            problems.append(f"cell {i} was not executed")
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i} has an error output ({out.get('ename')}: {out.get('evalue')})")
            data = out.get("data", {})
            if "image/png" in data:
                data["image/png"] = shrink_png(data["image/png"])
    if problems:
        raise SystemExit(f"error: {src} is not a clean executed notebook (run `make demo` again):\n  " + "\n  ".join(problems))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".tmp"
    nbformat.write(nb, tmp)
    os.replace(tmp, dst)
    return os.path.getsize(src), os.path.getsize(dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+", help="executed notebooks")
    ap.add_argument("--out", default="docs/notebooks")
    args = ap.parse_args()
    total = 0
    for src in args.notebooks:
        dst = os.path.join(args.out, os.path.basename(src))
        before, after = export(src, dst)
        total += after
        print(f"{os.path.basename(src)}: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")
    print(f"total {total / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
