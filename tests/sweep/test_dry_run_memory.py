"""`scaling sweep --dry-run --device-memory`: the memory plan of each run (scaling.sweep.memory_plan), its parse
errors, and `--json`, the expanded run table as JSON."""

import json

import pytest

from scaling import cli, config
from scaling.sweep.memory_plan import fit, parse_bytes
from scaling.sweep.spec import SpecError
from tests.sweep.tiny import BASE, OVERRIDES, spec_dict


def _spec(tmp_path, **fields):
    path = tmp_path / "spec.py"
    path.write_text(f"def get_sweep():\n    return {spec_dict(**fields)!r}\n")
    return str(path)


@pytest.mark.parametrize("text, expected", [("80GiB", 80 * 2**30), ("80GB", 80 * 10**9), ("16e9", 16 * 10**9),
                                            ("512 MiB", 512 * 2**20), ("1.5gib", int(1.5 * 2**30))])
def test_memory_sizes_parse(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("flags, message", [
    (["--device-memory", "80 parsecs"], "--device-memory '80 parsecs': must be a memory size like 80GiB"),
    (["--device-memory=0GB"], "--device-memory '0GB': must be a memory size"),
    (["--device-memory", "80GiB", "--devices", "6"], "--devices 6: must be a power of two"),
    (["--device-memory", "80GiB", "--mesh", "{fsdp: 2}"], "--mesh '{fsdp: 2}': must be a JSON mapping"),
    (["--device-memory", "80GiB", "--mesh", '{"pipeline": 2}'], "--mesh: train.mesh: unknown axis 'pipeline'"),
    (["--devices", "8"], "give --device-memory too"),
])
def test_bad_flags_get_one_line(tmp_path, capsys, flags, message):
    assert cli.main(["sweep", _spec(tmp_path), "--dry-run", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_plan_shrinks_with_devices_and_microbatches():
    cfg = config.load(BASE, [*OVERRIDES.items(), ("model.d_model", 256), ("model.n_layers", 2),
                             ("train.batch_size", 64), ("train.context", 64)])
    one = fit(cfg, 1, 2**40)
    assert one["fits"] and one["devices"] == 1 and one["microbatches"] == 1
    need = one["memory"]["total"]
    # a device of half the memory: more microbatches or more devices, each under the budget
    half = fit(cfg, 8, int(need / 2 / 0.9))
    assert half["fits"] and (half["devices"] > 1 or half["microbatches"] > 1)
    assert half["memory"]["total"] <= need / 2
    # less than the parameters, gradients and AdamW state alone: no microbatch count fits one device; 64 do
    m = one["memory"]
    tiny = int((m["params"] + m["optimizer"] + m["gradients"]) / 2)
    nope = fit(cfg, 1, tiny)
    assert not nope["fits"] and nope["memory"]["total"] > tiny
    many = fit(cfg, 64, tiny)
    assert many["fits"] and many["devices"] > 1 and many["memory"]["total"] <= 0.9 * tiny
    # a fixed mesh shape: fsdp takes every device
    fsdp = fit(cfg, 64, tiny, mesh={"fsdp": -1})
    assert fsdp["mesh"]["fsdp"] == fsdp["devices"] and fsdp["mesh"]["tensor"] == 1


def test_dry_run_table_has_memory_columns(tmp_path, capsys):
    assert cli.main(["sweep", _spec(tmp_path), "--dry-run", "--devices", "4", "--device-memory", "80GiB"]) == 0
    out = capsys.readouterr().out
    assert "GiB/dev" in out and "microb." in out and "80.0 GiB less 10% headroom" in out


def test_dry_run_json_holds_the_resolved_fields(tmp_path, capsys):
    assert cli.main(["sweep", _spec(tmp_path), "--dry-run", "--json", "--device-memory", "1GiB"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2
    for r in rows:
        assert r["model"]["d_model"] == 32 and r["model"]["vocab_size"] == 259 and "attention" in r["model"]
        assert r["batch_size"] == 4 and r["context"] == 32 and r["tokens"] == r["steps"] * 4 * 32
        assert r["schedule"]["kind"] == "warmup_cosine" and r["schedule"]["total_steps"] == r["steps"]
        assert r["flops"] == pytest.approx(3 * r["flops_per_token"] * r["tokens"], rel=1e-6)
        plan = r["memory_plan"]
        assert plan["fits"] and plan["devices"] == 1 and plan["remat"] == "none"
        assert plan["memory"]["total"] == r["memory_one_device"]["total"]
    assert rows[0]["steps"] < rows[1]["steps"]


def test_fit_rejects_nothing_silently():
    with pytest.raises(SpecError, match="--device-memory 'lots'"):
        parse_bytes("lots")


def test_a_run_that_fits_no_layout_without_remat_is_planned_with_block_remat():
    from scaling.memory import train_memory

    cfg = config.load(BASE, [*OVERRIDES.items(), ("model.n_layers", 8), ("train.batch_size", 1),
                             ("train.context", 2048)])
    none, block = train_memory(cfg), train_memory(cfg, remat="block")
    assert block.total < none.total / 2
    plan = fit(cfg, 1, int(block.total / 0.9) + 1)
    assert plan["fits"] and plan["remat"] == "block" and plan["memory"]["total"] == block.total
    assert fit(cfg, 1, int(none.total / 0.9) + 1)["remat"] == "none"


def test_json_without_device_memory_has_the_one_device_memory(tmp_path, capsys):
    assert cli.main(["sweep", _spec(tmp_path), "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all("memory_plan" not in r and r["memory_one_device"]["total"] > r["memory_one_device"]["params"] > 0
               for r in rows)


def test_planning_flags_need_dry_run(tmp_path, capsys):
    assert cli.main(["sweep", _spec(tmp_path), "--device-memory", "80GiB", "--sweep-dir", str(tmp_path / "s")]) == 2
    assert "add --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
