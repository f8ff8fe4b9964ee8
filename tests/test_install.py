"""The install a user gets (requirements.txt and the embedded model's wheel, no test extras) runs esjax: a
tiny run, and processes building the embedded tokenizer at once, each in a process that can import only
what that install holds."""
import json
import os
import subprocess
import sys

import pytest

from installs import ROOT, user_install_view


@pytest.fixture(scope="module")
def user_env(tmp_path_factory):
    """The environment of a process that sees only a user's install (run it with ``python -S``)."""
    view = user_install_view(str(tmp_path_factory.mktemp("site")))
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([ROOT, view])}


def test_a_run_needs_nothing_requirements_txt_does_not_install(tmp_path, user_env):
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
    env = {**user_env, "XLA_FLAGS": "", "ESJAX_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert json.load(open(out / "es" / "summary.json"))["status"] == "complete"


def test_the_tokenizer_is_built_without_torch_by_processes_at_once_into_one_complete_cache(tmp_path, user_env):
    """A fresh install of esjax has no torch (a test-only dependency), and transformers' own GGUF tokenizer
    route imports it: the embedded model's tokenizer is built by ``gguf_tokenizer`` instead. Three processes
    that see only a user's install (no torch) build the cache at once (parallel test workers, the hosts of a
    multi-host run on one machine), over an incomplete copy that a process killed while writing it left
    behind: each writes a staging directory and renames it into place, so each gets a working tokenizer and
    chat template, and one complete directory remains, which a later process reads."""
    code = ("import importlib.util, sys; assert importlib.util.find_spec('torch') is None; "
            "from esjax.models.registry import smollm2_tokenizer; t = smollm2_tokenizer(); "
            "print(t(t.apply_chat_template([{'role': 'user', 'content': '2+3='}], tokenize=False, "
            "add_generation_prompt=True))['input_ids']); assert 'torch' not in sys.modules")
    env = {**user_env, "ESJAX_CACHE": str(tmp_path / "cache")}
    run = lambda: subprocess.Popen([sys.executable, "-S", "-c", code], env=env, stdout=subprocess.PIPE,  # noqa: E731
                                   stderr=subprocess.PIPE, text=True)
    (tmp_path / "cache" / "smollm2-135m-instruct-tokenizer").mkdir(parents=True)
    (tmp_path / "cache" / "smollm2-135m-instruct-tokenizer" / "tokenizer_config.json").write_text("{}")
    procs = [run() for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outs]
    ids = {out.strip() for out, _ in outs}
    assert len(ids) == 1 and next(iter(ids)).startswith("[1, ")  # <|im_start|> opens the chat turn
    assert os.listdir(tmp_path / "cache") == ["smollm2-135m-instruct-tokenizer"]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(tmp_path / "cache" / "smollm2-135m-instruct-tokenizer"))
    later = run()
    assert later.communicate(timeout=300)[0].strip() in ids and later.returncode == 0
