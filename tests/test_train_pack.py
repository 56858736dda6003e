"""Packed runs (scaling.train_pack): k runs trained in one program, killed with -9 and resumed, equal the runs
trained alone, bit for bit; packs of runs that do not share a step are refused."""

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
from scaling.train_pack import pack_key, train_packed
from scaling.xla_env import with_cpu_defaults
from tests.test_train import PRESET, TINY, _restore_flat, _rows, _without_speed

ROOT = Path(__file__).parents[1]
# three runs of one shape: another seed, and another seed with another learning rate, warm-up and length
VARIANTS = [["train.seed=0"], ["train.seed=1"], ["train.seed=2", "train.lr=3e-3", "train.warmup_steps=2",
                                                  "train.steps=13"]]
BASE = TINY + ["train.steps=9", "train.eval_every=4", "train.checkpoint_every=3"]


def _cfgs(extra=()):
    return [config.load(PRESET, BASE + list(extra) + v) for v in VARIANTS]


def _same_run(a: Path, b: Path):
    """Two workdirs hold the same run: metrics (but speed), evaluations and the final checkpoint, bit for bit."""
    assert _without_speed(_rows(a, "train")) == _without_speed(_rows(b, "train"))
    assert _rows(a, "eval") == _rows(b, "eval")
    (step_a, sa), (step_b, sb) = _restore_flat(a), _restore_flat(b)
    assert step_a == step_b and sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(np.asarray(sa[k]), np.asarray(sb[k]), err_msg=k)
    sta, stb = (json.loads((d / "status.json").read_text()) for d in (a, b))
    assert sta["status"] == stb["status"] == "done" and sta["val_loss"] == stb["val_loss"]


_SCRIPT = """
import sys
from scaling import config
from scaling.train import train
from scaling.train_pack import train_packed
from tests.test_train_pack import PRESET, BASE, VARIANTS
mode, root, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
cfgs = [config.load(PRESET, BASE + extra + v) for v in VARIANTS]
if mode == "alone":
    for i, cfg in enumerate(cfgs):
        train(cfg, f"{root}/alone{i}", progress=False)
else:
    train_packed(cfgs, [f"{root}/packed{i}" for i in range(len(cfgs))])
"""


def _start(mode, tmp_path, extra=()):
    """The script above in a process at the flags a sweep worker has (XLA's defaults plus scaling.xla_env's): the
    equality holds for the programs users run. At the suite's quick-compile flags (tests/conftest.py: optimisation
    level 0, no fusion emitters) a packed retention step's loss differed from the lone step's in its last bits
    from step 5 (its parameters did not)."""
    env = with_cpu_defaults({**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""})
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, mode, str(tmp_path), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ran(proc):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out


def test_a_pack_of_other_shapes_is_refused_before_any_step(tmp_path):
    a, b = config.load(PRESET, BASE), config.load(PRESET, BASE + ["model.d_model=16"])
    with pytest.raises(ValueError, match="differs from run 0"):
        train_packed([a, b], [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="twice"):
        train_packed([a, a], [tmp_path / "a", tmp_path / "a"])
    assert pack_key(a.to_dict()) == pack_key(config.load(PRESET, BASE + ["train.seed=5", "train.lr=1e-2"]).to_dict())
    assert pack_key(a.to_dict()) != pack_key(b.to_dict())


@pytest.mark.long
def test_packed_runs_killed_then_resumed_equal_the_runs_alone(tmp_path):
    # killed once the first checkpoint (step 10) appears, with 50 steps to go: really mid-run
    extra = ["train.steps=60", "train.checkpoint_every=10", "train.eval_every=20"]
    alone = _start("alone", tmp_path, extra)
    proc = _start("packed", tmp_path, extra)
    first = tmp_path / "packed0" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(first.glob("[0-9]*")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for i in range(3):  # really cut mid-run
        assert json.loads((tmp_path / f"packed{i}" / "status.json").read_text())["status"] == "running"
    _ran(_start("packed", tmp_path, extra))
    _ran(alone)
    for i in range(len(VARIANTS)):
        _same_run(tmp_path / f"alone{i}", tmp_path / f"packed{i}")
    steps = [json.loads((tmp_path / f"packed{i}" / "status.json").read_text())["step"] for i in range(3)]
    assert steps == [60, 60, 13]  # the short run left the pack; the others went on as a pack of two
    # the seeds really differ (the comparison above is not of three copies of one run)
    assert _rows(tmp_path / "alone0", "train")[0]["loss"] != _rows(tmp_path / "alone1", "train")[0]["loss"]
