"""The embedded default model: SmolLM2-135M-Instruct GGUF vs transformers' own GGUF load of the same file."""
import os

import jax
import numpy as np
import pytest

from esjax.models.decoder import forward, positions_from_mask
from esjax.models.gguf_loader import load_gguf, smollm2_gguf_path, unpermute_qk
from esjax.sampling import make_generate, pad_prompts

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
PROMPTS = ["What is 2+3?", "Name a color.", "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def hf_gguf():
    path = smollm2_gguf_path()
    d, f = os.path.split(path)
    return transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads × Dh 8
    permuted = w.reshape(2, 2, 4, 3).swapaxes(1, 2).reshape(16, 3)  # llama.cpp convert
    np.testing.assert_array_equal(unpermute_qk(permuted, 2), w)


def test_logits_and_greedy_tokens_match_transformers(smollm2, hf_gguf):
    tok = smollm2.tokenizer
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"] for p in PROMPTS]
    x = np.asarray([ids[0]], np.int32)
    m = np.ones_like(x, bool)
    ours = np.asarray(forward(smollm2.params, smollm2.cfg, x, positions_from_mask(m), m)[0])
    with torch.no_grad():
        ref = hf_gguf(torch.tensor(x)).logits.numpy()
    assert np.abs(ours - ref).max() < 1e-3
    toks, mask = pad_prompts(ids, smollm2.cfg.pad_token_id)
    out = make_generate(smollm2.cfg, 32)(smollm2.params, toks, mask, jax.random.key(0))
    for i, p in enumerate(ids):
        with torch.no_grad():
            hf = hf_gguf.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False,
                                  eos_token_id=list(smollm2.cfg.eos_token_ids), pad_token_id=smollm2.cfg.pad_token_id)
        hf_new = hf.numpy()[0, len(p):]
        n = int(out.lengths[i])
        np.testing.assert_array_equal(np.asarray(out.tokens[i, :n]), hf_new[:n])
        assert n == len(hf_new)


def test_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        load_gguf(str(tmp_path / "none.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_gguf(str(bad))


def test_processes_building_the_tokenizer_cache_at_once_leave_one_complete_copy(tmp_path):
    """Test workers and the hosts of a multi-host run may build the tokenizer cache at the same moment: each
    writes a staging directory and renames it into place, so every process gets a working tokenizer and one
    complete directory remains (no staging leftovers); a later call reads it."""
    import subprocess
    import sys

    code = ("from esjax.models.registry import smollm2_tokenizer; "
            "print(smollm2_tokenizer()('2+3=')['input_ids'])")
    env = {**os.environ, "ESJAX_CACHE": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outs)) == 1 and outs[0].startswith("[")
    assert os.listdir(tmp_path) == ["smollm2-135m-instruct-tokenizer"]
    cached = tmp_path / "smollm2-135m-instruct-tokenizer"
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(cached))
    fresh = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, check=True)
    assert fresh.stdout.strip() == outs[0]
