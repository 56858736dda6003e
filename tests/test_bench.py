"""scaling bench kernels: rows for each op and backend, FLOPs from the accounting, Pallas skipped on CPU."""

import json

import jax

from scaling import bench
from scaling.cli import main


def test_bench_kernels_rows(tmp_path):
    res = bench.bench_kernels(contexts=(48,), heads=2, head_dim=8, d_state=8, chunk=16, repeats=1)
    assert res["machine"]["jax"] == jax.__version__
    by = {(r["op"], r["backend"]): r for r in res["rows"]}
    assert set(by) == {(op, be) for op in ("power_retention", "ssd") for be in ("xla", "pallas")}
    for op in ("power_retention", "ssd"):
        r = by[op, "xla"]
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_flops_per_token"] > 0
        assert abs(r["fwd_gflops_per_s"] - r["fwd_flops_per_token"] * 48 / (r["fwd_ms"] / 1e3) / 1e9) < 1e-6
        if jax.devices()[0].platform == "cpu":
            assert "accelerator" in by[op, "pallas"]["skipped"] or "GPU" in by[op, "pallas"]["skipped"]
    assert "power_retention | xla | 48" in bench.kernels_table(res)


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert main(["bench", "kernels", "--context", "32", "--heads", "2", "--head-dim", "8", "--d-state", "8",
                 "--chunk", "16", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["date"] and len(data["rows"]) == 4
    assert "Pallas" in capsys.readouterr().out
