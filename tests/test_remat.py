"""Rematerialisation of the learner's forward (``ModelConfig.remat``, a run's ``--set remat=...``): the GRPO
update is the same with every policy (plain and shared-prefix scoring, micro-batches, a KL reference), the
compiled learner recomputes the blocks in its backward pass, and a generation, which is never differentiated, compiles to the same program."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.config import build_config
from esjax.grpo.step import GRPOConfig, grpo_step, init_state
from esjax.models.config import ModelConfig
from esjax.models.decoder import init_params, token_logprobs
from esjax.sampling import make_generate
from test_grpo import TINY, _batch


def _update(mcfg, batch, cfg, prefix_len=0, group=1):
    params = init_params(TINY, jax.random.key(0), 0.3)
    ref = init_params(TINY, jax.random.key(1), 0.3)
    step = jax.jit(functools.partial(grpo_step, model_cfg=mcfg, cfg=cfg), static_argnames=("prefix_len", "group"))
    return step(init_state(params, jax.random.key(0), cfg), batch, ref, prefix_len=prefix_len, group=group)


@pytest.mark.parametrize("shared", [False, True])
def test_every_remat_policy_gives_the_same_update(shared):
    """Rows scored in full (micro-batches of 4), or with a 3-token prefix shared by all rows and each group
    of 4 rows' prompt run once (the cached forwards the learner differentiates): the params, loss, KL and
    gradient norm of one update agree across policies to float32 rounding."""
    batch, kw = _batch(), {}
    if shared:
        tokens = np.array(batch["tokens"])
        tokens[:, :3] = tokens[0, :3]
        tokens[:, :5] = np.repeat(tokens[::4, :5], 4, 0)
        batch = dict(batch, tokens=jnp.asarray(tokens), attn_mask=jnp.ones(tokens.shape, bool),
                     loss_mask=batch["loss_mask"][:, 5:])
        kw = dict(prefix_len=3, group=4)
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, learning_rate=1e-2, beta=0.05, adam_eps=1.0,
                     micro_batch_size=0 if shared else 4)
    (a, ma), *others = (_update(TINY.replace(remat=r), batch, cfg, **kw) for r in ("none", "dots", "full"))
    assert float(ma["grad_norm"]) > 0 and float(ma["kl"]) > 0
    for b, mb in others:
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
        for k in ("loss", "kl", "grad_norm"):
            assert float(mb[k]) == pytest.approx(float(ma[k]), rel=1e-5), k


def test_the_learners_backward_recomputes_each_block_with_remat():
    """The setting reaches the learner: its compiled gradient runs each block's weight matmuls again in the
    backward pass with "full" (8 per block: the q, k, v, o, gate and up projections and the two attention dots;
    the down projection's output is not needed), only the attention's two batched dots with "dots". (XLA's memory analysis on CPU shows no saving: the CPU scheduler places the
    recomputed forward early; a GPU's is what ``bench_accel --remat`` measures, docs/gpu.md.)"""
    mcfg = ModelConfig(arch="llama", vocab_size=64, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=16)
    params = init_params(mcfg, jax.random.key(0))
    tokens, mask = jnp.zeros((4, 16), jnp.int32), jnp.ones((4, 16), bool)
    dots = {r: jax.jit(jax.grad(lambda p, c=mcfg.replace(remat=r): token_logprobs(p, c, tokens, mask).sum()))
            .lower(params).compile().as_text().count(" dot(") for r in ("none", "dots", "full")}
    assert dots["full"] - dots["none"] == mcfg.num_layers * 8, dots
    assert dots["dots"] - dots["none"] == mcfg.num_layers * 2, dots


def _program(text: str) -> str:
    """Compiled HLO text without source locations (metadata, the file / function / frame tables)."""
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    return "\n".join(line for line in text.splitlines() if line.startswith(("HloModule", "ENTRY", "%", " ", "}")))


def test_generation_compiles_the_same_program_whatever_the_remat():
    """Generation is never differentiated: its compiled program (prefill, decode loop) does not change."""
    prompts = jnp.asarray(np.random.default_rng(0).integers(2, TINY.vocab_size, (3, 5)), jnp.int32)
    mask = jnp.ones(prompts.shape, bool)
    params = init_params(TINY, jax.random.key(0), 0.3)
    texts = [make_generate(TINY.replace(remat=r), 6).lower(params, prompts, mask, jax.random.key(0)).compile().as_text()
             for r in ("none", "full")]
    assert _program(texts[0]) == _program(texts[1]) and " dot(" in _program(texts[0])


def test_a_runs_remat_reaches_its_model():
    with pytest.raises(ValueError, match=r"RunConfig.remat must be one of \('none', 'dots', 'full'\), got 'some'"):
        build_config("tiny", ["remat=some"])
    with pytest.raises(ValueError, match=r"ModelConfig.remat='x'"):
        TINY.replace(remat="x")
    assert build_config("tiny", ["remat=full"]).model_settings()["remat"] == "full"
