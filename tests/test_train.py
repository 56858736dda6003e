"""Training loop: learning, metrics, resume after kill -9 (bit for bit), divergence, sharding, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scaling import config
from scaling.checkpoint import Checkpointer, flat_tree
from scaling.train import init_train_state, train

ROOT = Path(__file__).parents[1]
PRESET = str(ROOT / "configs/models/power_retention_tiny.py")
TINY = ["model.d_model=32", "model.n_layers=1", "model.retention.n_heads=2", "model.retention.n_kv_heads=2",
        "model.retention.chunk_size=16", "train.batch_size=4", "train.context=32", "train.log_every=1",
        "data.eval_tokens=512", "train.warmup_steps=5"]


def _cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "scaling.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _rows(workdir, kind):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _restore_flat(workdir):
    """(step, {path: array}) of a run's newest checkpoint: parameters and optimizer state."""
    cfg = config.from_dict(json.loads((Path(workdir) / "config.json").read_text())["config"])
    _, target, _, _ = init_train_state(cfg)
    with Checkpointer(Path(workdir) / "checkpoints") as ck:
        r = ck.restore(flat_tree(target))
    return r.step, r.state


def _without_speed(rows):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def test_train_learns_and_writes_artifacts(tmp_path):
    cfg = config.load(PRESET, TINY + ["train.steps=40", "train.eval_every=20", "train.checkpoint_every=20",
                                      "train.lr=3e-3"])
    res = train(cfg, tmp_path, progress=False)
    assert res.status == "done" and res.step == 40
    train_rows, eval_rows = _rows(tmp_path, "train"), _rows(tmp_path, "eval")
    assert [r["step"] for r in train_rows] == list(range(1, 41))
    assert [r["step"] for r in eval_rows] == [20, 40]
    assert np.mean([r["loss"] for r in train_rows[-5:]]) < np.mean([r["loss"] for r in train_rows[:5]]) - 1.0
    assert eval_rows[-1]["val_bpb"] == pytest.approx(eval_rows[-1]["val_loss"] / np.log(2), rel=0.1)
    # the fixed evaluation set: ceil(eval_tokens / context) = 16 rows of 32 tokens, with a standard error
    assert eval_rows[-1]["val_tokens"] <= 512 and 0 < eval_rows[-1]["val_loss_se"] < 0.5 * eval_rows[-1]["val_loss"]
    for key in ("lr", "grad_norm", "tokens_per_s", "flops", "tokens"):
        assert key in train_rows[-1]
    assert train_rows[-1]["tokens"] == 40 * 4 * 32
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "done" and status["state_size"] > 0
    with Checkpointer(tmp_path / "checkpoints") as ck:
        assert ck.steps() == [20, 40]
    # a finished run is not retrained
    again = train(cfg, tmp_path, progress=False)
    assert again.step == 40 and len(_rows(tmp_path, "train")) == 40


@pytest.mark.slow
def test_workdir_of_another_config_is_refused(tmp_path):
    train(config.load(PRESET, TINY + ["train.steps=2"]), tmp_path, progress=False)
    with pytest.raises(config.ConfigError, match="different config"):
        train(config.load(PRESET, TINY + ["train.steps=3"]), tmp_path, progress=False)


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_exact(tmp_path):
    args = [PRESET, *sum((["--set", s] for s in TINY + ["train.steps=300", "train.eval_every=100",
                                                       "train.checkpoint_every=10"]), []), "--no-progress"]
    ref = tmp_path / "ref"
    proc = _cli(["train", *args, "--workdir", str(ref)])
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    victim = tmp_path / "victim"
    proc = _cli(["train", *args, "--workdir", str(victim)])
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = [p for p in (victim / "checkpoints").glob("[0-9]*")] if (victim / "checkpoints").exists() else []
        if steps:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((victim / "status.json").read_text())["status"] == "running"  # really cut mid-run
    resumed = _cli(["train", *args, "--workdir", str(victim)])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()

    assert _without_speed(_rows(victim, "train")) == _without_speed(_rows(ref, "train"))
    assert _rows(victim, "eval") == _rows(ref, "eval")
    (step_a, sa), (step_b, sb) = _restore_flat(ref), _restore_flat(victim)
    assert step_a == step_b == 300 and sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(np.asarray(sa[k]), np.asarray(sb[k]), err_msg=k)


def test_divergence_stops_with_status_and_keeps_last_good_checkpoint(tmp_path):
    proc = _cli(["train", PRESET, *sum((["--set", s] for s in TINY + [
        "train.steps=200", "train.lr=1e9", "train.warmup_steps=0", "train.grad_clip=1e9",
        "train.checkpoint_every=1", "train.eval_every=1000"]), []), "--no-progress", "--workdir", str(tmp_path)])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, out
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "diverged"
    assert status["step"] < 200
    step, state = _restore_flat(tmp_path)
    assert step == status["step"]
    assert all(np.isfinite(np.asarray(v, np.float32)).all() for v in state.values())


@pytest.mark.slow
def test_four_devices_match_one(tmp_path):
    """The same run sharded over 4 host devices gives the 1-device losses within 1e-5 relative."""
    script = (
        "import json,sys; from scaling import config; from scaling.train import train\n"
        f"cfg = config.load({PRESET!r}, {TINY!r} + ['train.steps=6', 'train.eval_every=6'])\n"
        "r = train(cfg, sys.argv[1], progress=False)\n"
        "import jax; print(json.dumps({'n': jax.device_count()}))\n")
    losses = {}
    for n in (1, 4):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
        env = {**os.environ, "XLA_FLAGS": flags}  # the suite's flags (tests/conftest.py) and the device count
        wd = tmp_path / f"d{n}"
        out = subprocess.run([sys.executable, "-c", script, str(wd)], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["n"] == n
        losses[n] = [r["loss"] for r in _rows(wd, "train")] + [r["val_loss"] for r in _rows(wd, "eval")]
    np.testing.assert_allclose(losses[4], losses[1], rtol=1e-5)


@pytest.mark.parametrize("override, field", [
    ("model.retention.p=7", "model.retention.p"),
    ("model.pattern='RQ'", "model.pattern"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.source='web'", "data.source"),
    ("train.lr=-1.0", "train.lr"),
])
def test_cli_bad_config_is_one_line_naming_the_field(override, field, tmp_path):
    proc = _cli(["train", PRESET, "--set", override, "--workdir", str(tmp_path / "w")])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0], out
    assert not (tmp_path / "w").exists()  # rejected before anything ran


def test_generate_from_checkpoint(tmp_path):
    from scaling.inference import generate
    from scaling.train import load_run

    train(config.load(PRESET, TINY + ["train.steps=3"]), tmp_path, progress=False)
    cfg, model, step = load_run(tmp_path)
    assert step == 3 and cfg.model.d_model == 32
    pieces = []
    text = generate(model, "def ", 16, temperature=1.0, top_k=20, top_p=0.9, on_text=pieces.append)
    # 16 bytes decode to at most 16 characters (an invalid byte becomes one U+FFFD)
    assert "".join(pieces) == text and len(text) <= 16
    greedy = [generate(model, "import ", 8, temperature=0) for _ in range(2)]
    assert greedy[0] == greedy[1]
    with pytest.raises(ValueError, match="top_p"):
        generate(model, "x", 4, top_p=0)


@pytest.mark.slow
def test_pallas_kernels_train_like_xla(tmp_path):
    """A retention + Mamba-2 model with model.kernel = pallas trains to the same losses as with xla (1e-5)."""
    losses = {}
    for kernel in ("xla", "pallas"):
        cfg = config.load(PRESET, TINY + ["model.pattern='RM'", "model.n_layers=2", "model.mamba.head_dim=16",
                                          "model.mamba.d_state=8", "model.mamba.chunk_size=16",
                                          f"model.kernel='{kernel}'", "train.steps=3", "train.eval_every=3"])
        train(cfg, tmp_path / kernel, progress=False)
        losses[kernel] = [r["loss"] for r in _rows(tmp_path / kernel, "train")] + [
            r["val_loss"] for r in _rows(tmp_path / kernel, "eval")]
    np.testing.assert_allclose(losses["pallas"], losses["xla"], rtol=1e-5)


def test_evaluate_reports_the_ratio_estimator_and_its_standard_error():
    from scaling.train import evaluate

    rng = np.random.default_rng(0)
    loss_sum = rng.uniform(50, 150, 24)
    count = rng.integers(20, 40, 24).astype(float)
    count[-3:] = 0.0  # padding rows carry no loss token and are left out of the standard error
    loss_sum[-3:] = 0.0
    rows = [loss_sum, count, count, np.zeros(24)]
    batches = [slice(0, 8), slice(8, 16), slice(16, 24)]
    out = evaluate(lambda params, b: [r[b] for r in rows], None, batches, lambda b: b)
    mean = loss_sum.sum() / count.sum()
    assert out["val_loss"] == pytest.approx(mean) and out["val_tokens"] == int(count.sum())
    # the same number by the delta method on (sum of losses, sum of counts) over the 21 real sequences
    l, n = loss_sum[:21], count[:21]
    cov = np.cov(np.stack([l, n]))  # ddof 1
    var = (cov[0, 0] - 2 * mean * cov[0, 1] + mean**2 * cov[1, 1]) / 21 / n.mean() ** 2
    assert out["val_loss_se"] == pytest.approx(np.sqrt(var), rel=1e-9)


def test_the_compiled_train_step_does_not_depend_on_run_length_or_peak_lr():
    """The schedule is an argument of the step: runs of one shape at any budget share one compiled program."""
    from scaling.train import make_steps

    texts = []
    for steps, lr in ((10, 1e-3), (999, 3e-2)):
        cfg = config.load(PRESET, TINY + [f"train.steps={steps}", f"train.lr={lr}"])
        graphdef, state, tx, _ = init_train_state(cfg)
        train_step, _ = make_steps(graphdef, tx)
        b = {"inputs": np.zeros((4, 16), np.int32), "targets": np.zeros((4, 16), np.int32),
             "loss_mask": np.ones((4, 16), np.float32)}
        texts.append(train_step.lower(state["params"], state["opt"], b, np.float32(lr)).as_text())
    assert texts[0] == texts[1]


def test_learning_rates_follow_the_schedule():
    from scaling.train import learning_rates, make_optimizer

    cfg = config.load(PRESET, TINY + ["train.steps=50", "train.warmup_steps=5", "train.lr=0.01"])
    _, schedule = make_optimizer(cfg.train, 50)
    lrs = learning_rates(schedule, 50)
    assert lrs.dtype == np.float32 and lrs.shape == (50,)
    np.testing.assert_allclose(lrs, [float(schedule(i)) for i in range(50)], rtol=1e-6, atol=1e-9)
    assert lrs[0] == 0 and abs(lrs[5] - 0.01) < 1e-9 and lrs[-1] < lrs[10]
