"""scaling bench: every sub-bench at tiny sizes writes the JSON fields docs/performance.md promises and its plots;
FLOPs come from the accounting; the slope, the targets and the CLI's errors."""

import json
import math

import jax
import jax.numpy as jnp
import pytest

from benchmarks import targets
from scaling import accounting, bench, cli_bench, config
from scaling.cli import main

TINY = ["--sizes", "64", "--repeats", "1", "--context", "32", "64", "--heads", "2", "--head-dim", "8",
        "--d-state", "8", "--chunk", "16", "--train-batch", "2", "--train-context", "16", "--tokens", "2",
        "--set", "model.n_layers=1", "--no-progress"]


def test_loglog_slope_on_synthetic_numbers():
    xs = [1024, 2048, 4096, 8192, 16384]
    assert bench.loglog_slope(xs, [3e-3 * x for x in xs]) == pytest.approx(1.0)
    assert bench.loglog_slope(xs, [1e-9 * x**2 for x in xs]) == pytest.approx(2.0)
    assert bench.loglog_slope(xs, [5.0 for _ in xs]) == pytest.approx(0.0, abs=1e-12)
    # a fixed overhead pulls the slope below 1; a least-squares fit, not the end points alone
    ys = [1.0 + 1e-3 * x for x in xs]
    assert bench.loglog_slope(xs, ys) < 1.0
    assert bench.loglog_slope([1, 2, 4], [1, 2.2, 4]) == pytest.approx(1.0, abs=0.1)
    with pytest.raises(ValueError, match="two distinct"):
        bench.loglog_slope([1024], [1.0])


@pytest.mark.slow
def test_bench_all_cli_writes_json_and_plots(tmp_path):
    out = tmp_path / "b"
    assert main(["bench", "all", "--out", str(out), "--presets", "transformer_tiny", "power_retention_tiny",
                 *TINY]) == 0
    data = json.loads((out / "bench_all.json").read_text())
    for part in ("peak", "ops", "train", "decode"):
        m = data[part]["machine"]
        assert m["jax"] == jax.__version__ and m["date"] and m["cpu_count"] >= 1 and m["platform"]
        assert (out / f"bench_{part}.png").stat().st_size > 0 and (out / f"bench_{part}.svg").stat().st_size > 0

    peak = data["peak"]
    assert peak["peak_gflops_per_s"] == max(r["gflops_per_s"] for r in peak["rows"]) > 0
    assert peak["bandwidth_gb_per_s"] > 0
    r = peak["rows"][0]
    assert r["gflops_per_s"] == pytest.approx(2 * 64**3 / (r["ms"] / 1e3) / 1e9)

    ops = data["ops"]
    assert ops["peak_gflops_per_s"] == peak["peak_gflops_per_s"]  # one peak, shared by every ratio
    keys = {(r["op"], r["form"], r["T"]) for r in ops["rows"]}
    from scaling.bench_ops import OPS, _op_forms

    assert set(OPS) == {"power_retention", "ssd", "attention", "gla", "gated_delta", "based"}  # every mixer's op
    assert keys == {(op, f, t) for t in (32, 64) for op in OPS for f in _op_forms(op)}
    assert set(_op_forms("attention")) == {"blockwise", "parallel"} and "chunked" in _op_forms("gla")
    shape = {"heads": 2, "head_dim": 8, "d_state": 8, "chunk": 16, "p": 2}
    for r in ops["rows"]:
        assert r["flops"] == pytest.approx(bench.op_flops_per_token(r["op"], r["T"], **shape) * r["T"])
        assert r["gflops_per_s"] == pytest.approx(r["flops"] / (r["fwd_ms"] / 1e3) / 1e9)
        assert r["pct_peak"] == pytest.approx(100 * r["gflops_per_s"] / peak["peak_gflops_per_s"])
        assert r["tokens_per_s"] == pytest.approx(r["T"] / (r["fwd_ms"] / 1e3))
    for key in ("power_retention/chunked", "power_retention/parallel", "ssd/chunked", "attention/parallel"):
        s = ops["slopes"][key]
        pts = sorted((r["T"], r["fwd_ms"]) for r in ops["rows"] if f"{r['op']}/{r['form']}" == key)
        assert s["slope"] == pytest.approx(math.log(pts[1][1] / pts[0][1]) / math.log(2))
        assert (s["T_min"], s["T_max"]) == (32, 64)
    assert [a["T"] for a in ops["attention"]] == [32, 64] and all(a["parallel_run"] for a in ops["attention"])
    assert {(x["op"], x["T"]) for x in ops["ratios"]} == {(o, t) for o in OPS if o != "attention" for t in (32, 64)}

    train = data["train"]
    assert [r["preset"] for r in train["rows"]] == ["transformer_tiny", "power_retention_tiny"]
    from scaling import config
    for r in train["rows"]:
        cfg = config.load(bench.PRESET_DIR / f"{r['preset']}.py", ["model.n_layers=1"])
        assert r["n_layers"] == 1 and (r["batch"], r["context"]) == (2, 16)
        assert r["train_flops_per_token"] == pytest.approx(3 * accounting.flops_per_token(cfg, 16))
        assert r["tokens_per_s"] == pytest.approx(32 / r["step_s"])
        assert r["mfu"] == pytest.approx(r["gflops_per_s"] / peak["peak_gflops_per_s"])

    dec = data["decode"]
    assert {(r["preset"], r["context"]) for r in dec["rows"]} == {
        (p, c) for p in ("transformer_tiny", "power_retention_tiny") for c in (32, 64)}
    for r in dec["rows"]:
        assert r["latency_ms"] > 0 and r["peak_bytes"] > 0 and r["tokens_timed"] == 2
    judged = targets.check_result(data)  # benchmarks/targets.py judges what the library measured
    assert "targets" not in data and set(judged) == set(targets.TARGETS)
    assert all(t["value"] is None and t["met"] is None for k, t in judged.items()
               if k != "decode_flat")  # not measured at the targets' shapes


def test_decode_memory_is_flat_for_recurrent_state_and_grows_for_attention():
    res = bench.bench_decode(presets=("power_retention_tiny", "mamba2_tiny", "transformer_tiny"), contexts=(64, 512),
                             tokens=2, prompt=4, overrides=["model.n_layers=1"])
    by = {(r["preset"], r["context"]): r for r in res["rows"]}
    for p in ("power_retention_tiny", "mamba2_tiny"):
        assert by[p, 64]["peak_bytes"] == by[p, 512]["peak_bytes"]
        assert by[p, 64]["state_bytes"] == by[p, 512]["state_bytes"]
    kv = by["transformer_tiny", 512]["state_bytes"] - by["transformer_tiny", 64]["state_bytes"]
    assert kv == 4 * 2 * (512 - 64) * 128  # one layer's K and V, fp32, d_model 128
    assert by["transformer_tiny", 512]["peak_bytes"] > by["transformer_tiny", 64]["peak_bytes"]
    ratios = {r["preset"]: r for r in res["ratios"]}
    assert ratios["power_retention_tiny"]["peak_bytes_ratio"] == 1.0
    assert ratios["transformer_tiny"]["peak_bytes_ratio"] > 1.0


def test_at_position_moves_every_position_counter_only():
    from scaling import config, models

    cfg = config.load(bench.PRESET_DIR / "hybrid_tiny.py", [])
    state = models.build(cfg.model).init_state(1, 40)
    moved = bench._at_position(state, 1000)
    assert int(moved["pos"]) == 1000
    attn = [s for s in moved["layers"] if hasattr(s, "pos")]
    assert attn and all(int(s.pos) == 1000 for s in attn)
    before = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    after = [x for x in jax.tree.leaves(moved) if x.ndim > 0]
    assert all(a is b for a, b in zip(before, after, strict=True))


def _fake(pct, slopes, lat, mem, mfu):
    ops = {"rows": [{"op": "power_retention", "form": "chunked", "T": 4096, "p": 2, "heads": 4, "head_dim": 64,
                     "pct_peak": pct}],
           "slopes": {k: {"slope": v, "T_min": 1024, "T_max": 16384} for k, v in slopes.items()}}
    decode = {"rows": [{"preset": "power_retention_small", "pattern": "R"},
                       {"preset": "transformer_small", "pattern": "A"}],
              "ratios": [{"preset": "power_retention_small", "context_lo": 1024, "context_hi": 16384,
                          "latency_ratio": lat, "peak_bytes_ratio": mem},
                         {"preset": "transformer_small", "context_lo": 1024, "context_hi": 16384,
                          "latency_ratio": 9.0, "peak_bytes_ratio": 5.0}]}
    train = {"rows": [{"preset": "transformer_small", "mfu": mfu}]}
    return targets.check(ops, train, decode)


def test_check_targets_judges_each_target():
    ok = _fake(55.0, {"power_retention/chunked": 1.02, "ssd/chunked": 1.1}, 1.05, 1.0, 0.45)
    assert all(t["met"] for t in ok.values())
    assert "transformer_small" not in ok["decode_flat"]["value"]  # attention is not held to the flat target
    bad = _fake(30.0, {"power_retention/chunked": 1.3, "ssd/chunked": 1.1}, 1.5, 1.0, 0.2)
    assert not any(t["met"] for t in bad.values())
    assert _fake(55.0, {"ssd/chunked": 1.0}, 1.0, 1.3, 0.45)["decode_flat"]["met"] is False  # memory grew
    assert _fake(55.0, {"ssd/chunked": 1.0}, 1.0, 1.0, 0.45)["chunked_slope"]["met"] is None  # one op missing
    assert "**no**" in targets.table(bad) and "yes" in targets.table(ok)
    # the new chunked forms are held to the same slope where measured
    slow_gla = _fake(55.0, {"power_retention/chunked": 1.0, "ssd/chunked": 1.0, "gla/chunked": 1.4}, 1.0, 1.0, 0.45)
    assert slow_gla["chunked_slope"]["met"] is False


def test_targets_script_judges_a_bench_json(tmp_path):
    ok = {"kind": "train", "rows": [{"preset": "transformer_small", "mfu": 0.45}]}
    bad = {"kind": "train", "rows": [{"preset": "transformer_small", "mfu": 0.30}]}
    (tmp_path / "ok.json").write_text(json.dumps(ok))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert targets.main([str(tmp_path / "ok.json")]) == 0
    assert targets.main([str(tmp_path / "bad.json")]) == 1
    assert targets.main([str(tmp_path / "missing.json")]) == 2


def test_sub_bench_cli_writes_its_json_and_plot(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["bench", "peak", "--out", str(tmp_path), "--json", str(out), "--sizes", "32", "64",
                 "--repeats", "1", "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "peak" and [r["n"] for r in data["rows"]] == [32, 64]
    assert (tmp_path / "bench_peak.png").exists() and (tmp_path / "bench_peak.svg").exists()
    assert "GFLOP/s" in capsys.readouterr().out


def test_cli_rejects_bad_sub_commands_and_flags(tmp_path, capsys):
    assert cli_bench.SUB_BENCHES == bench.SUB_BENCHES
    with pytest.raises(SystemExit):
        main(["bench", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
    for argv, msg in ((["ops", "--context", "0"], "--context = 0: must be an integer >= 1"),
                      (["peak", "--repeats", "0"], "--repeats = 0"),
                      (["train", "--presets", "nope"],
                       "unknown 'nope'; accepted: based_small, based_tiny, gated_delta_small"),
                      (["decode", "--tokens", "-1"], "--tokens = -1"),
                      (["ops", "--max-gib", "0"], "--max-gib = 0.0: must be > 0")):
        assert main(["bench", *argv, "--out", str(tmp_path)]) == 2
        assert msg in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing timed or written before the error
    with pytest.raises(SystemExit):
        main(["bench", "ops", "--p", "5"])
    with pytest.raises(ValueError, match="ops: unknown"):
        bench.bench_ops(contexts=(16,), ops=("lstm",), peak={"peak_gflops_per_s": 1.0})
    # a preset may be a config file's path, as well as a name in configs/models
    bench._check_presets([str(bench.PRESET_DIR / "gla_tiny.py")])
    assert bench._preset_cfg(str(bench.PRESET_DIR / "gla_tiny.py")).model.pattern == "G"
    with pytest.raises(ValueError, match=r"unknown '/nowhere.py'; accepted: .*, or a config file's path"):
        bench._check_presets(["/nowhere.py"])


def test_presets_come_from_the_checkout_else_from_an_installed_wheels_copy(tmp_path, monkeypatch):
    """pyproject.toml's data-files put configs/models under <prefix>/share/statescale/ in a wheel;
    ``config.shipped`` takes the checkout's folder where there is one, else that copy (checked by hand with a wheel
    installed into a fresh venv: docs/performance.md)."""
    checkout, share = tmp_path / "checkout", tmp_path / "share"
    (share / "configs" / "models").mkdir(parents=True)
    monkeypatch.setattr(config, "CHECKOUT", checkout)
    monkeypatch.setattr(config, "SHARE", share)
    assert config.shipped("configs/models") == share / "configs" / "models"  # no checkout: the wheel's copy
    (checkout / "configs" / "models").mkdir(parents=True)
    assert config.shipped("configs/models") == checkout / "configs" / "models"  # the checkout wins
    assert config.shipped("experiments/x.py") == checkout / "experiments" / "x.py"  # neither: the checkout's path
    assert bench.PRESET_DIR.name == "models" and (bench.PRESET_DIR / "transformer_tiny.py").is_file()


@pytest.mark.slow
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


def test_bench_kernels_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert main(["bench", "kernels", "--context", "32", "--heads", "2", "--head-dim", "8", "--d-state", "8",
                 "--chunk", "16", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["date"] and len(data["rows"]) == 4
    assert "Pallas" in capsys.readouterr().out


def test_bench_ops_attention_memory_blockwise_vs_parallel():
    """Attention rows: forward+backward times and compiled memory; a parallel form past max_gib is compiled for its
    memory but not run. At T = 1024 (block 128) the blockwise form's temporaries are far below the parallel's."""
    res = bench.bench_ops(contexts=(64, 1024), heads=2, head_dim=16, repeats=1, ops=("attention",),
                          attention_block=128, max_gib=3e-3, peak={"peak_gflops_per_s": 1.0})
    by = {(r["form"], r["T"]): r for r in res["rows"]}
    assert set(by) == {(f, t) for f in ("blockwise", "parallel") for t in (64, 1024)}
    for r in res["rows"]:
        assert r["fwd_temp_bytes"] >= 0 and r["fwd_bwd_peak_bytes"] > 0 and r["block"] == 128
    big = by["parallel", 1024]
    assert "not run" in big["skipped"] and "fwd_bwd_ms" not in big and "fwd_ms" not in big
    assert by["blockwise", 1024]["fwd_bwd_ms"] > 0 and by["parallel", 64]["fwd_bwd_ms"] > 0
    assert big["fwd_bwd_temp_bytes"] >= 4 * 2 * 1024 * 1024  # holds the [heads, T, T] fp32 scores
    assert by["blockwise", 1024]["fwd_bwd_temp_bytes"] < big["fwd_bwd_temp_bytes"] / 4
    summary = {a["T"]: a for a in res["attention"]}
    assert summary[1024]["parallel_run"] is False and summary[1024]["time_parallel_over_blockwise"] is None
    assert summary[1024]["temp_parallel_over_blockwise"] > 4
    table = bench.ops_table(res)
    assert "| parallel | 1024 | not run | not run |" in table and "| blockwise | 1024 |" in table


def test_op_inputs_shapes():
    q, k, v, lg, dt, A, B, C = bench.op_inputs(2, 5, 3, 4, 6)
    assert q.shape == k.shape == v.shape == (2, 5, 3, 4) and lg.shape == dt.shape == (2, 5, 3)
    assert A.shape == (3,) and B.shape == C.shape == (2, 5, 1, 6)
    assert bool(jnp.all(lg <= 0)) and bool(jnp.all(dt > 0)) and bool(jnp.all(A < 0))


@pytest.mark.parametrize("kind, dtype, want", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", ("H100 SXM", 989.4e12)),
    ("NVIDIA H100 PCIe", "float32", ("H100 PCIe", 51e12)),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", ("A100", 312e12)),
    ("TPU v5 lite", "bfloat16", ("TPU v5e", 197e12)),
    ("TPU v5", "bfloat16", ("TPU v5p", 459e12)),
    ("TPU v4", "float32", None),  # no datasheet fp32 matmul rate
    ("cpu", "float32", None),
])
def test_hardware_peak_table(kind, dtype, want):
    assert bench.bench_util.hardware_peak(kind, dtype) == want


def test_bench_train_reports_mfu_against_the_datasheet_on_a_known_device(monkeypatch):
    peak = {"peak_gflops_per_s": 100.0}
    kw = dict(presets=["transformer_tiny"], batch=2, context=16, repeats=1, overrides=["model.n_layers=1"], peak=peak)
    assert "hardware_mfu" not in bench.bench_train(**kw)["rows"][0]  # this CPU: only the measured peak
    monkeypatch.setattr(bench.bench_util, "device_kind", lambda: "NVIDIA H100 80GB HBM3")
    result = bench.bench_train(**kw)
    row = result["rows"][0]
    assert row["hardware"] == "H100 SXM" and row["hardware_peak_flops"] == 67e12  # the preset is fp32
    assert math.isclose(row["hardware_mfu"], row["gflops_per_s"] * 1e9 / 67e12)
    assert "MFU (datasheet peak)" in bench.train_table(result) and "of H100 SXM float32" in bench.train_table(result)


@pytest.mark.slow
def test_accelerator_check_runs_its_xla_rows_on_cpu(tmp_path):
    """benchmarks/accelerator_check.py end to end at a smoke shape: every part runs (Pallas rows skipped on CPU)
    and the tables for docs/kernels.md are written."""
    from benchmarks import accelerator_check

    code = accelerator_check.main(["--out", str(tmp_path), "--contexts", "64", "--presets", "transformer_tiny",
                                   "--repeats", "1"])
    data = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert code == 0 and not any("error" in p for p in data.values() if isinstance(p, dict))
    assert {r["backend"] for r in data["kernels"]["rows"]} == {"xla", "pallas"}
    assert all(r["dtype"] == "bfloat16" for r in data["kernels"]["rows"])
    assert "| transformer_tiny |" in (tmp_path / "accelerator_check.md").read_text()


@pytest.mark.slow
def test_chunk_sizes_benchmark_times_every_chunk_and_names_the_fastest(tmp_path):
    """benchmarks/chunk_sizes.py (behind scaling/mixers/chunks.py) at two chunks, one round: a row per (shape,
    chunk), one fastest per shape at 1.00x, and the markdown table."""
    from benchmarks import chunk_sizes

    rows = chunk_sizes.main(["--mixers", "gla", "--chunks", "16", "32", "--shapes", "quickstart", "--rounds", "1",
                             "--repeats", "1", "--json", str(tmp_path / "c.json")])
    assert [(r["shape"], r["chunk"]) for r in rows] == [(s, c) for s in ("quickstart d16", "quickstart d32")
                                                         for c in (16, 32)]
    for shape in ("quickstart d16", "quickstart d32"):
        got = [r for r in rows if r["shape"] == shape]
        assert sum(r["fastest"] for r in got) == 1 and min(r["vs_fastest"] for r in got) == 1.0
        assert all(r["step_ms"] > 0 for r in got)
    assert "| gla | quickstart d16 |" in chunk_sizes.table(rows)
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == rows
