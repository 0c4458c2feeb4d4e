"""Helpers to write small notebooks from the tests."""
import nbformat

RUST_KERNEL = {"name": "rust", "display_name": "Rust (oodnc)", "language": "rust"}


def rust_notebook(cells):
    """A notebook for our `rust` kernel; `cells` are code strings, or ("md", text)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = RUST_KERNEL
    nb.metadata["language_info"] = {"name": "rust", "file_extension": ".rs"}
    for c in cells:
        if isinstance(c, tuple) and c[0] == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(c[1]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(c))
    return nb
