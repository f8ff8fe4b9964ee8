"""The install a user gets (requirements.txt and the embedded model's wheel, no test extras) runs esjax: a
tiny run in a process that can import only what that install holds."""
import json
import os
import subprocess
import sys

from installs import ROOT, user_install_view


def test_a_run_needs_nothing_requirements_txt_does_not_install(tmp_path):
    """Every esjax module is imported and a tiny ES run (chat-templated prompts, rewards, evaluation, orbax
    checkpoints, metrics) goes end to end in a process that sees only the distributions ``pip install -r
    requirements.txt`` brings in (no torch, no test-only package). Found this way: jinja2, which
    transformers' chat templates import and which only torch, a test dependency, had installed here (the
    quickstart failed on a fresh machine), and transformers' GGUF tokenizer route importing torch (the
    tokenizer is built by ``esjax.models.gguf_loader.gguf_tokenizer`` now)."""
    out = tmp_path / "run"
    code = f"""
import importlib, importlib.util, pkgutil, runpy, sys
assert importlib.util.find_spec("torch") is None
import esjax
for m in pkgutil.walk_packages(esjax.__path__, "esjax."):
    importlib.import_module(m.name)
sys.argv = ["single_task", "--preset", "tiny", "--method", "es", "--out", {str(out)!r}, "--no-progress",
            "--set", "es_iterations=1"]
runpy.run_module("experiments.single_task", run_name="__main__")
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "ESJAX_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([ROOT, user_install_view(str(tmp_path / "site"))])}
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert json.load(open(out / "es" / "summary.json"))["status"] == "complete"
