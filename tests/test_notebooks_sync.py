"""The executed notebooks/*.ipynb copies match their percent-format notebooks/*.py sources, cell for cell,
and carry the outputs of a run on docs/cpu-quick (JSON only: nothing is executed). After editing a
notebook or the committed results, regenerate with ``python scripts/notebooks_to_ipynb.py``."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("notebooks_to_ipynb", os.path.join(ROOT, "scripts", "notebooks_to_ipynb.py"))
conv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conv)
REGENERATE = "stale: rerun `python scripts/notebooks_to_ipynb.py`"


def _ipynb(name):
    nb = json.load(open(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), encoding="utf-8"))
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    return nb


def _text(source):  # nbformat stores a source or a text output as a string or a list of lines
    return source if isinstance(source, str) else "".join(source)


def test_every_notebook_script_has_its_ipynb():
    scripts = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".py"))
    assert scripts == sorted(conv.NAMES)
    assert all(os.path.exists(os.path.join(ROOT, "notebooks", f"{n}.ipynb")) for n in scripts)


@pytest.mark.parametrize("name", conv.NAMES)
def test_ipynb_cells_equal_the_script_cells(name):
    text = open(os.path.join(ROOT, "notebooks", f"{name}.py"), encoding="utf-8").read()
    cells = conv.percent_cells(text)
    assert len(cells) == text.count("\n# %%") and cells[0][0] == "markdown"  # every marker opens a cell
    nb = _ipynb(name)
    assert [(c["cell_type"], _text(c["source"])) for c in nb["cells"]] == cells, f"notebooks/{name}.ipynb is {REGENERATE}"


@pytest.mark.parametrize("name", conv.NAMES)
def test_ipynb_is_executed_with_outputs(name):
    """Executed in order without errors; a cell that prints has text (the unfinished-run warning aside: it
    must not print on the committed results), one that draws has a PNG."""
    path = os.path.join(ROOT, "notebooks", f"{name}.ipynb")
    assert os.path.getsize(path) < 1_000_000
    code = [c for c in _ipynb(name)["cells"] if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), f"{path} is {REGENERATE}"
    for c in code:
        src, kinds = _text(c["source"]), {o["output_type"] for o in c["outputs"]}
        assert "error" not in kinds, _text(c["source"])[:80]
        streams = "".join(_text(o["text"]) for o in c["outputs"] if o["output_type"] == "stream")
        if any("print(" in line and "WARNING" not in line for line in src.splitlines()):
            assert streams.strip(), f"{path}: no printed output for the cell starting {src[:60]!r}"
        assert "WARNING" not in streams and "Traceback" not in streams
        pngs = [o for o in c["outputs"] if "image/png" in o.get("data", {})]
        assert len(pngs) == src.count("plt.subplots("), f"{path}: figures missing for the cell starting {src[:60]!r}"


def test_ipynb_outputs_are_the_committed_cpu_quick_numbers():
    res = json.load(open(os.path.join(ROOT, "docs", "cpu-quick", "results.json")))

    def printed(name):
        return "".join(_text(o.get("text", "")) for c in _ipynb(name)["cells"] if c["cell_type"] == "code"
                       for o in c["outputs"])
    geometry = printed("geometry_es_vs_grpo")
    assert f"global cosine {res['cosine']['global']}\n" in geometry, REGENERATE
    for m in ("es", "grpo"):
        sp = {dt: round(v["1e-06"]["global"], 4) for dt, v in res["sparsity"][m].items()}
        assert f"{m} {sp}\n" in geometry, REGENERATE
    theory = printed("theory_vs_measured_drift")
    assert f"measured / predicted at the end: {res['theory']['final_ratio_measured_over_predicted']}\n" in theory
    assert f"off-task KL predicted {res['theory']['offtask_kl_predicted']:.4g} vs measured " \
           f"{res['theory']['offtask_kl_measured']:.4g} nats/token" in theory


def test_percent_cells_parser():
    text = "# ---\n# jupyter:\n#   x: 1\n# ---\n\n# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\ny = 2\n\n# %%\nprint(x)\n"
    assert conv.percent_cells(text) == [("markdown", "# Title\n\ntext"), ("code", "x = 1\n\n\ny = 2"), ("code", "print(x)")]
    with pytest.raises(ValueError, match="code before the first"):
        conv.percent_cells("x = 1\n# %%\ny = 2\n")
    with pytest.raises(ValueError, match="unsupported cell marker"):
        conv.percent_cells("# %% [raw]\nx\n")
