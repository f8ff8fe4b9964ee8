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


def test_gguf_tokenizer_is_the_one_transformers_builds_from_the_file():
    """``gguf_tokenizer`` (no torch) against transformers' ``AutoTokenizer.from_pretrained(..., gguf_file=)``
    (which reads the file with torch): the same backend (vocabulary, merges, pre-tokenizer, added tokens as
    one JSON), special tokens, chat template, and ids on text that exercises digits, whitespace, unicode and
    special tokens."""
    from esjax.models.gguf_loader import gguf_tokenizer

    path = smollm2_gguf_path()
    ours = gguf_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    assert ours.backend_tokenizer.to_str() == theirs.backend_tokenizer.to_str()
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "eos_token_id", "pad_token_id", "chat_template"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.eos_token == "<|im_end|>" and ours.pad_token_id == 2
    texts = ["What is 2+3?", " 123 4567 x", "héllo wörld 日本語 🙂", "  spaces\t\ttabs\n\nnew",
             "<|im_start|>user\nhi<|im_end|>", "Answer: <answer>(25 - 3) * 4</answer>"]
    assert [ours(t)["input_ids"] for t in texts] == [theirs(t)["input_ids"] for t in texts]
    chat = [{"role": "user", "content": "Name a color."}]
    assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        gguf_tokenizer(path + ".missing")
