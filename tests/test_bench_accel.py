"""experiments.bench_accel runs end to end on CPU (tiny shapes, tiny sizes) and writes its table: the
script a lent GPU runs must not rot between loans. No speed is asserted."""
import json

import jax
import numpy as np


def test_bench_accel_writes_its_table_on_cpu(tmp_path):
    from experiments.bench_accel import main, roofline_step
    from experiments.shapes import shape_config

    out = tmp_path / "bench"
    res = main(["--shapes", "tiny", "--out", str(out), "--no-reference", "--sections",
                "generate,loop,cache,es16,update,paper2", "--gen-rows", "2", "--new", "4", "--members", "2", "--es-new", "2",
                "--cache-new", "6", "--cache-block", "2"])
    table = (out / "table.md").read_text()
    assert "| generate 2 rows x 4 new |" in table and "ES lowrank N=2 x 16 prompts" in table
    assert "ES update full, N=2" in table and "failed" not in table, table
    assert "| decode step at 2 rows, 4 tokens per loop iteration |" in table and "XLA_FLAGS" in table
    assert "| generate 2 rows x 6 new, cache grown in blocks of 2 |" in table
    data = json.loads((out / "results.json").read_text())
    assert data["device"] == jax.devices()[0].device_kind
    ratios = [v["ratio"] for k, v in res.items() if k.startswith("ES ") and "update" not in k]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    # roofline: at 1 row the weights dominate; 2 bytes per bf16 parameter over the bandwidth
    m = shape_config("qwen2.5-1.5b")
    r = roofline_step(m, 1, 0, (1e15, 1e12))
    np.testing.assert_allclose(r["ideal_s"], m.param_count() * 2 / 1e12)
