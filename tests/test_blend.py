"""PowerCoder-style metamorphosis (train.blend_steps): a converted layer outputs (1 - a) softmax attention + a power
retention of the same q, k, v, a rising from 0 to 1. At a = 0 the converted model is its source transformer, at
a = 1 power retention alone; a blended run starts at the source's loss and counts the attention it still runs."""

import json

import jax
import numpy as np
import pytest

from scaling import accounting, config
from scaling.train import train
from tests.test_convert import SRC, TRAIN, _pair


@pytest.mark.parametrize("packed", [False, True])
def test_blend_zero_is_the_source_and_one_is_retention(packed):
    _, src, _, dst = _pair()
    tokens = jax.random.randint(jax.random.key(0), (3, 24), 0, 256)
    seg = np.repeat(np.array([[1] * 10 + [2] * 9 + [3] * 5]), 3, axis=0) if packed else None
    rows = np.ones(3, np.float32)
    want = np.asarray(src(tokens, seg))
    np.testing.assert_allclose(np.asarray(dst(tokens, seg, blend=0 * rows)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dst(tokens, seg, blend=rows)), np.asarray(dst(tokens, seg)),
                               rtol=1e-6, atol=1e-6)
    mixed = np.asarray(dst(tokens, seg, blend=np.array([0.0, 0.5, 1.0], np.float32)))  # one weight per row
    np.testing.assert_allclose(mixed[0], want[0], rtol=1e-5, atol=1e-5)
    assert np.abs(mixed[1] - want[1]).max() > 1e-3 and np.abs(mixed[1] - np.asarray(dst(tokens, seg))[1]).max() > 1e-3


def test_blended_run_starts_at_the_source_loss_and_counts_its_attention(tmp_path):
    src = config.load(None, SRC + TRAIN + ["train.steps=4"])
    train(src, tmp_path / "src", progress=False)
    src_rows = [json.loads(r) for r in (tmp_path / "src/metrics.jsonl").read_text().splitlines()]
    sets = SRC + TRAIN + ["model.pattern='R'", "model.retention.n_kv_heads=2", "train.steps=4",
                          f"train.init_from='{tmp_path / 'src'}'"]
    res = train(config.load(None, sets + ["train.blend_steps=2"]), tmp_path / "blend", progress=False)
    rows = [json.loads(r) for r in (tmp_path / "blend/metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0  # blend 0: the source transformer's own loss
    assert rows[0]["val_loss"] == pytest.approx(src_rows[-1]["val_loss"], rel=1e-5)
    cfg = config.load(None, sets)
    base = accounting.train_flops_per_token(cfg, 32) * 4 * 32
    extra = accounting.blend_flops_per_token(cfg, 32) * 4 * 32
    assert res.summary["flops"] == pytest.approx(4 * base + 2 * extra)  # two blended steps of four
    abrupt = train(cfg, tmp_path / "abrupt", progress=False)
    assert abrupt.summary["flops"] == pytest.approx(4 * base)
    assert abrupt.run_id != res.run_id


@pytest.mark.parametrize("sets, match", [
    (["train.blend_steps=3"], r"train.blend_steps = 3: must be None or an integer >= 1 of a converted run"),
    (["train.blend_steps=0", "train.init_from='x'"], r"train.blend_steps = 0: must be None or an integer >= 1"),
])
def test_bad_blend_steps_are_one_line(sets, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(None, SRC + sets)


def test_blend_longer_than_the_run_is_refused(tmp_path):
    src = config.load(None, SRC + TRAIN + ["train.steps=2"])
    train(src, tmp_path / "src", progress=False)
    cfg = config.load(None, SRC + TRAIN + ["model.pattern='R'", "model.retention.n_kv_heads=2", "train.steps=2",
                                           f"train.init_from='{tmp_path / 'src'}'", "train.blend_steps=5"])
    with pytest.raises(config.ConfigError, match=r"train.blend_steps = 5: must be at most the run's 2 steps"):
        train(cfg, tmp_path / "dst", progress=False)
    assert not (tmp_path / "dst").exists()  # refused before anything is written
