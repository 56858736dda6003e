"""The train step's layout: gradient accumulation (train.microbatches), remat (train.remat), donation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import config
from scaling.steps import loss_and_grads
from scaling.train import init_train_state, make_steps, train

SMALL = ["model.d_model=32", "model.n_layers=2", "model.pattern='A'", "model.attention.n_heads=2",
         "model.attention.n_kv_heads=2", "model.retention.n_heads=2", "model.retention.n_kv_heads=2",
         "model.retention.chunk_size=8", "model.mamba.head_dim=16", "model.mamba.d_state=8",
         "model.mamba.chunk_size=8", "train.batch_size=8", "train.context=16"]


def _batch(b=8, t=16, vocab=259, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
    lengths = np.array([16, 0, 3, 16, 9, 1, 16, 0])[:b]  # unequal loss-token counts, two rows without any
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_microbatches_give_the_full_batch_update():
    """k = 1, 2, 4 microbatches: the same loss and new parameters (fp32, 1e-5), though padding leaves the
    microbatches unequal numbers of loss tokens (a mean over the whole batch's loss tokens, not of means)."""
    cfg = config.load(None, SMALL)
    graphdef, state, tx, _ = init_train_state(cfg)
    batch = _batch()
    for k in (1, 2, 4):  # the microbatches' loss-token counts do differ
        counts = batch["loss_mask"].reshape(8 // k, k, 16).swapaxes(0, 1).sum(axis=(1, 2))
        assert k == 1 or len(set(counts)) > 1
    out = {}
    for k in (1, 2, 4):
        step, _ = make_steps(graphdef, tx, microbatches=k)
        _, grads = jax.jit(lambda p, b, k=k: loss_and_grads(graphdef, p, b, microbatches=k))(state["params"], batch)
        # lr 1e-3: AdamW's first update is lr * g / (|g| + eps), which turns the round-off of a gradient entry
        # near zero into an update change of up to ~lr; at 1e-3 the new parameters still agree to 1e-5
        params, _, metrics = step(state["params"], state["opt"], batch, np.float32(1e-3))
        out[k] = params, float(metrics["loss"]), float(metrics["grad_norm"]), grads
    for k in (2, 4):
        assert out[k][1] == pytest.approx(out[1][1], rel=1e-6)
        assert out[k][2] == pytest.approx(out[1][2], rel=1e-5)
        assert _max_diff(out[k][3], out[1][3]) < 1e-6  # the gradients
        assert _max_diff(out[k][0], out[1][0]) < 1e-5  # the new parameters
    assert _max_diff(out[1][0], state["params"]) > 5e-4  # the update itself is not negligible


def test_microbatches_must_divide_the_batch_per_device():
    with pytest.raises(config.ConfigError, match=r"^train\.microbatches = 3: must divide train\.batch_size = 8$"):
        config.load(None, SMALL + ["train.microbatches=3"])


@pytest.mark.parametrize("remat,pattern", [("block", "A"), pytest.param("block", "RM", marks=pytest.mark.slow),
                                           ("dots_saveable", "A")])
def test_remat_keeps_loss_and_gradients(remat, pattern):
    cfg = config.load(None, SMALL + [f"model.pattern='{pattern}'"])
    graphdef, state, _, _ = init_train_state(cfg)
    batch = _batch()
    loss, grads = jax.jit(lambda p, b: loss_and_grads(graphdef, p, b))(state["params"], batch)
    loss_r, grads_r = jax.jit(lambda p, b: loss_and_grads(graphdef, p, b, remat=remat))(state["params"], batch)
    assert abs(float(loss_r) - float(loss)) < 1e-6
    assert _max_diff(grads_r, grads) < 1e-6


def test_remat_name_is_checked():
    with pytest.raises(config.ConfigError, match=r"^train\.remat = 'dots': must be one of none, block, .*"
                                                 r"dots_saveable"):
        config.load(None, ["train.remat='dots'"])


def _temp_bytes(remat, scan):
    cfg = config.load(None, ["model.d_model=64", "model.n_layers=8", "model.pattern='A'", "train.batch_size=4",
                             "train.context=512", f"train.remat='{remat}'", f"model.scan_layers={scan}"])
    graphdef, state, tx, _ = init_train_state(cfg)
    step, _ = make_steps(graphdef, tx, remat=remat)
    batch = {"inputs": np.zeros((4, 512), np.int32), "targets": np.zeros((4, 512), np.int32),
             "loss_mask": np.ones((4, 512), np.float32)}
    compiled = step.lower(state["params"], state["opt"], batch, np.float32(1e-3)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_block_remat_lowers_the_compiled_steps_temporary_memory():
    """8 attention layers at context 512 (activations dominate), under scan_layers: recomputing each block's
    activations keeps less alive. (Unrolled, XLA's CPU scheduler hoists the recomputation into the forward pass
    and the temporary memory stays what it was: 506 vs 517 MB; the GPU scheduler is memory-aware.)"""
    none, block = _temp_bytes("none", True), _temp_bytes("block", True)
    assert block < 0.5 * none, (none, block)


@pytest.mark.slow
def test_scan_layers_train_step_matches_unrolled():
    """One step with stacked parameters updates each layer as the unrolled model does (the weight-decay mask
    sees a stacked norm gain [repeats, d] as a vector, not a matrix)."""
    new = {}
    for scan in (False, True):
        cfg = config.load(None, SMALL + ["model.n_layers=4", "model.pattern='AR'", f"model.scan_layers={scan}"])
        graphdef, state, tx, _ = init_train_state(cfg)
        step, _ = make_steps(graphdef, tx)
        params, _, metrics = step(state["params"], state["opt"], _batch(), np.float32(1e-3))
        new[scan] = nnx.merge(graphdef, params), float(metrics["loss"])
    assert new[True][1] == pytest.approx(new[False][1], rel=1e-5)
    for a, b in zip(new[False][0].layers(), new[True][0].layers(), strict=True):
        assert _max_diff(nnx.state(a), nnx.state(b)) < 1e-5


def test_train_with_microbatches_remat_and_donation(tmp_path):
    """The loop with a donated state: 3 steps of 2 microbatches with block remat, then a resume that is a no-op."""
    cfg = config.load(None, SMALL + ["train.steps=3", "train.microbatches=2", "train.remat='block'",
                                     "train.log_every=1", "train.eval_every=3", "train.checkpoint_every=3",
                                     "data.eval_tokens=64"])
    res = train(cfg, tmp_path, progress=False)
    assert res.status == "done" and res.step == 3 and np.isfinite(res.summary["final_loss"])
