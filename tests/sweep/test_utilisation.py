"""scaling.sweep.utilisation: the sweep MFU formula, the cores a local sweep uses, and the machine peak (the
environment's, or measured once into the cache and read back)."""

import json

import pytest

from scaling import bench_util
from scaling.sweep import utilisation


def test_sweep_mfu_is_flops_over_wall_times_the_peak_of_the_cores_used():
    # 7.8e12 FLOPs in 304 s on both cores of a 186 GFLOP/s machine: 13.8%
    assert utilisation.sweep_mfu(7.8e12, 304.0, 186.0, 2, 2) == pytest.approx(7.8e12 / (304 * 186e9))
    # one single-threaded worker of four cores: a quarter of the peak is its ceiling
    assert utilisation.sweep_mfu(1e12, 10.0, 400.0, 1, 4) == pytest.approx(1e12 / (10 * 100e9))
    assert utilisation.sweep_mfu(1e12, 0.0, 400.0, 1, 4) is None
    assert (utilisation.cores_used(1, 8), utilisation.cores_used(2, 8), utilisation.cores_used(16, 8)) == (8, 2, 8)
    line = utilisation.summary_line(7.8e12, 304.0, 0.138, 186.0, 2)
    assert line == "trained 7.8e+12 FLOPs in 304 s: 25.7 GFLOP/s, sweep MFU 13.8% of the 186 GFLOP/s fp32 GEMM peak " \
                   "(2 cores used)"


def test_machine_peak_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(utilisation.PEAK_ENV, raising=False)
    monkeypatch.setenv(utilisation.CACHE_ENV, str(tmp_path))
    calls = []

    def fake_peak(**kw):
        calls.append(kw)
        return {"kind": "peak", "peak_gflops_per_s": 123.0}

    monkeypatch.setattr(bench_util, "bench_peak", fake_peak)
    first = utilisation.machine_peak()
    assert first == {"peak_gflops_per_s": 123.0, "source": "measured"} and len(calls) == 1
    (cached,) = tmp_path.glob("peak-*.json")
    assert json.loads(cached.read_text())["peak_gflops_per_s"] == 123.0
    again = utilisation.machine_peak()
    assert again == {"peak_gflops_per_s": 123.0, "source": str(cached)} and len(calls) == 1
    cached.write_text("{not json")  # a damaged cache is measured again
    assert utilisation.machine_peak()["source"] == "measured" and len(calls) == 2


def test_the_peak_from_the_environment_is_checked(monkeypatch):
    monkeypatch.setenv(utilisation.PEAK_ENV, "250")
    assert utilisation.machine_peak() == {"peak_gflops_per_s": 250.0, "source": utilisation.PEAK_ENV}
    monkeypatch.setenv(utilisation.PEAK_ENV, "fast")
    with pytest.raises(ValueError, match="STATESCALE_PEAK_GFLOPS = 'fast': must be a number of GFLOP/s > 0"):
        utilisation.machine_peak()


def test_the_bench_sweep_needs_no_checkout_file(tmp_path, monkeypatch):
    """`scaling bench sweep`'s spec is built from the config defaults: it expands anywhere (here from an empty
    directory) to its 6 runs, each within 5% of the budget."""
    from scaling.bench_sweep import BUDGET, bench_spec
    from scaling.sweep import expand

    monkeypatch.chdir(tmp_path)
    plans = expand(bench_spec())
    assert len(plans) == 6 and len({p.run_id for p in plans}) == 6
    assert all(abs(p.flops / BUDGET - 1) <= 0.05 for p in plans)


@pytest.mark.slow
def test_bench_sweep_reports_the_mfu_of_what_it_trained(monkeypatch):
    from scaling import bench_sweep

    monkeypatch.setattr(bench_sweep, "BUDGET", 5e9)
    r = bench_sweep.bench_sweep(workers=1)
    assert r["runs"] == r["trained"] == 6 and not r["failed"]
    assert r["mfu"] == pytest.approx(r["trained_flops"] / (r["train_s"] * 100e9))  # conftest's peak, all cores
    assert "| 6 | 6 |" in bench_sweep.sweep_table(r)
