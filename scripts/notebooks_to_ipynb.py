"""Executed ``.ipynb`` copies of the percent-format notebooks, for readers on the web.

    pip install nbformat nbclient ipykernel      # only for this script; esjax does not need them
    python scripts/notebooks_to_ipynb.py         # every notebooks/*.py → notebooks/*.ipynb, run on docs/cpu-quick

Each ``notebooks/NAME.py`` (jupytext percent format: ``# %%`` starts a code cell, ``# %% [markdown]`` a
markdown cell whose lines drop their ``# ``; the leading ``# ---`` header is metadata, not a cell) becomes
``notebooks/NAME.ipynb`` with the same cells, executed by a Jupyter kernel in ``notebooks/`` (the
notebooks' default results folder is then ``docs/cpu-quick``; ``ESJAX_RESULTS`` is cleared). Figures the
notebooks save go to a temporary folder, not into ``docs/``. ``tests/test_notebooks_sync.py`` checks, by
reading the JSON only, that the ``.ipynb`` cells equal the ``.py`` cells and carry outputs: rerun this
script after editing a notebook or the committed results.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NAMES = ("geometry_es_vs_grpo", "theory_vs_measured_drift")
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def percent_cells(text: str, path: str = "<text>") -> List[Tuple[str, str]]:
    """``[(cell_type, source), ...]`` of a percent-format script: ``"code"`` or ``"markdown"``; sources
    without leading/trailing blank lines, markdown lines without their ``#`` / ``# `` prefix."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "# ---":  # jupytext header: notebook metadata, not a cell
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "# ---"), None)
        if end is None:
            raise ValueError(f"{path}: the '# ---' header on line 1 is never closed")
        lines = lines[end + 1:]
    cells, kind, body = [], None, []

    def close():
        if kind is None:
            if any(line.strip() for line in body):
                raise ValueError(f"{path}: code before the first '# %%' marker")
            return
        while body and not body[0].strip():
            body.pop(0)
        while body and not body[-1].strip():
            body.pop()
        if kind == "markdown":
            for i, line in enumerate(body):
                if line and not line.startswith("#"):
                    raise ValueError(f"{path}: markdown cell line {line!r} does not start with '#'")
                body[i] = line[2:] if line.startswith("# ") else line[1:]
        cells.append((kind, "\n".join(body)))

    for line in lines:
        if line.startswith("# %%"):
            close()
            marker = line[4:].strip()
            if marker not in ("", "[markdown]"):
                raise ValueError(f"{path}: unsupported cell marker {line!r} (use '# %%' or '# %% [markdown]')")
            kind, body = ("markdown" if marker == "[markdown]" else "code"), []
        else:
            body.append(line)
    close()
    return cells


def notebook_of(py_path: str):
    """An unexecuted nbformat v4 notebook with the cells of ``py_path``."""
    import nbformat

    text = open(py_path, encoding="utf-8").read()
    cells = [nbformat.v4.new_code_cell(src) if kind == "code" else nbformat.v4.new_markdown_cell(src)
             for kind, src in percent_cells(text, py_path)]
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i}"  # stable ids: regenerating changes only what really changed
    return nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC,
                                                           "language_info": {"name": "python"}})


def merged_streams(outputs: list) -> list:
    """Consecutive stream outputs of one stream (stdout, stderr) joined into one."""
    merged = []
    for o in outputs:
        if merged and o["output_type"] == "stream" == merged[-1]["output_type"] and o["name"] == merged[-1]["name"]:
            merged[-1]["text"] += o["text"]
        else:
            merged.append(o)
    return merged


def main(names=NAMES) -> None:
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as e:
        sys.exit(f"notebooks_to_ipynb: {e.name} is missing: pip install nbformat nbclient ipykernel "
                 "(only this script needs them)")
    with tempfile.TemporaryDirectory() as figures:
        env = {k: v for k, v in os.environ.items() if k != "ESJAX_RESULTS"}
        env.update(ESJAX_FIGURES=figures, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        old = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)  # the kernel inherits this process's environment
        try:
            for name in names:
                nb = notebook_of(os.path.join(NOTEBOOKS, f"{name}.py"))
                NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                               resources={"metadata": {"path": NOTEBOOKS}}).execute()
                nb.metadata.pop("widgets", None)
                for cell in nb.cells:  # one output per run of prints, however the kernel flushed them
                    if cell.cell_type == "code":
                        cell.outputs = merged_streams(cell.outputs)
                out = os.path.join(NOTEBOOKS, f"{name}.ipynb")
                nbformat.validate(nb)
                with open(out, "w", encoding="utf-8") as f:
                    f.write(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
                print(f"{os.path.relpath(out, ROOT)}: {os.path.getsize(out) / 1024:.0f} KiB", flush=True)
        finally:
            os.environ.clear()
            os.environ.update(old)


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or NAMES)
