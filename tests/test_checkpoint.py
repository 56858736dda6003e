"""Tests for scaling.checkpoint: round trips, retention, atomicity leftovers, corrupt-checkpoint fallback."""

import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from scaling.checkpoint import Checkpointer, Restored

# When one read of a corrupt checkpoint fails, orbax abandons its sibling reads: their callbacks hit a
# closed event loop and a coroutine is never awaited. Noise from orbax's internals, not a failure here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning"),
]

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # what orbax appends to a step directory while it is being written


def make_state(step: int) -> dict:
    """A small train-state-like pytree whose values depend on ``step``."""
    rng = np.random.default_rng(step)
    return {
        "params": {
            "w": rng.standard_normal((3, 4)).astype(np.float32),
            "emb": jnp.asarray(rng.standard_normal((5, 2)), dtype=jnp.bfloat16),
        },
        "opt": {
            "step": np.asarray(step, np.int32),
            "mu": {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)},
        },
    }


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def assert_bit_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape
        # numpy's NaN-aware comparison does not know bf16; fp32 holds every bf16 value exactly
        as_cmp = lambda x: x.astype(np.float32) if x.dtype == jnp.bfloat16 else x
        np.testing.assert_array_equal(as_cmp(g), as_cmp(w))
        assert g.tobytes() == w.tobytes()  # bit-exact, NaN payloads and signed zeros included


def save_steps(ck: Checkpointer, steps) -> None:
    for s in steps:
        ck.save(s, make_state(s), data_state={"epoch": 0, "pos": 10 * s}, meta={"loss": 1.0 / (s + 1)})


def step_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.isdigit())


def corrupt(step_dir: Path, how: str) -> None:
    """Damage a finished checkpoint the way a bad disk or a partial copy would."""
    if how in ("garbage", "truncate"):
        # tensorstore's OCDBT keeps the array chunks and b-tree nodes in files under .../d/
        data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
        assert data_files, sorted(str(p) for p in step_dir.rglob("*"))
        for p in data_files:
            n = p.stat().st_size
            p.write_bytes(b"\x5a" * n if how == "garbage" else b"")
    elif how == "missing_arrays":
        # Small arrays live inline in the b-tree nodes, which the save merges into state/d/: dropping
        # only state/ocdbt.process_*/ would not lose them. Drop every data directory.
        for p in sorted((step_dir / "state").rglob("d"), reverse=True):
            shutil.rmtree(p)
    elif how == "bad_json":
        (step_dir / "data_state" / "metadata").write_text("{not json")
    elif how == "missing_item":
        shutil.rmtree(step_dir / "meta")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("target_kind", ["concrete", "abstract"])
def test_round_trip_is_bit_exact(tmp_path, target_kind):
    state = make_state(7)
    state["params"]["emb"] = state["params"]["emb"].at[0, 0].set(jnp.nan).at[0, 1].set(-0.0)
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(7, state, data_state={"pos": [1, 2], "seed": 3}, meta={"loss": np.float32(0.5), "cfg": "abc"})
        target = state if target_kind == "concrete" else abstract(state)
        r = ck.restore(target)
    assert isinstance(r, Restored) and r.step == 7
    assert_bit_equal(r.state, state)
    assert r.state["params"]["emb"].dtype == jnp.bfloat16
    assert r.state["opt"]["step"].shape == () and r.state["opt"]["step"].dtype == np.int32
    assert r.data_state == {"pos": [1, 2], "seed": 3}
    assert r.meta == {"loss": 0.5, "cfg": "abc"} and type(r.meta["loss"]) is float


def test_meta_defaults_to_empty_dict(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(0, make_state(0), data_state={})
        r = ck.restore(make_state(0))
    assert r.meta == {} and r.data_state == {}


def test_keep_last_k_and_latest_step(tmp_path):
    ck = Checkpointer(tmp_path / "ck", keep=2)
    assert ck.steps() == [] and ck.latest_step() is None
    save_steps(ck, [1, 2, 3, 4, 5])
    assert ck.steps() == [4, 5] and ck.latest_step() == 5
    assert step_dirs(tmp_path / "ck") == ["4", "5"]
    ck.close()


def test_restore_specific_step(tmp_path):
    with Checkpointer(tmp_path, keep=5) as ck:
        save_steps(ck, [10, 20, 30])
        r = ck.restore(abstract(make_state(0)), step=20)
        assert r.step == 20 and r.data_state == {"epoch": 0, "pos": 200} and r.meta == {"loss": 1 / 21}
        assert_bit_equal(r.state, make_state(20))
        with pytest.raises(ValueError, match=r"step = 25.*\[10, 20, 30\]"):
            ck.restore(make_state(0), step=25)


def test_flat_keystr_state_and_nnx_state_round_trip(tmp_path):
    """What the training loop saves: an nnx model + optax state, as nnx.State and as {keystr: leaf}."""
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    _, params = nnx.split(model, nnx.Param)
    train_state = {"params": params, "opt": optax.adamw(1e-3).init(params)}
    flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(train_state)[0]}
    assert any("." in k and "[" in k for k in flat)  # keys full of orbax's own separator characters
    with Checkpointer(tmp_path) as ck:
        ck.save(1, flat, data_state={})
        assert_bit_equal(ck.restore(abstract(flat)).state, flat)
        ck.save(2, train_state, data_state={})
        r = ck.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), train_state))
    assert r.step == 2
    assert_bit_equal(r.state, train_state)


@pytest.mark.parametrize("how", ["garbage", "truncate", "missing_arrays", "bad_json", "missing_item"])
def test_corrupt_newest_falls_back_with_warning(tmp_path, caplog, how):
    ck = Checkpointer(tmp_path, keep=3)
    save_steps(ck, [1, 2, 3])
    corrupt(tmp_path / "3", how)
    assert ck.steps() == [1, 2, 3]  # a corrupt directory is still listed: only reading it can tell
    with caplog.at_level(logging.WARNING, logger="scaling.checkpoint"):
        with pytest.warns(UserWarning, match=r"checkpoint step 3 .* could not be restored"):
            r = ck.restore(make_state(0))
    assert r.step == 2 and r.data_state["pos"] == 20
    assert_bit_equal(r.state, make_state(2))
    assert any("step 3" in rec.getMessage() for rec in caplog.records)
    # An explicit request for the corrupt step does not fall back.
    with pytest.raises(RuntimeError, match="step 3"):
        ck.restore(make_state(0), step=3)
    ck.close()


def test_resave_after_fallback_replaces_corrupt_step(tmp_path, recwarn):
    with Checkpointer(tmp_path, keep=3) as ck:
        save_steps(ck, [1, 2, 3])
        corrupt(tmp_path / "3", "garbage")
        with pytest.warns(UserWarning):
            assert ck.restore(make_state(0)).step == 2
        recwarn.clear()
        new3 = jax.tree.map(lambda x: x + 1 if np.issubdtype(x.dtype, np.floating) else x, make_state(3))
        ck.save(3, new3, data_state={"pos": 31})
        r = ck.restore(make_state(0))
        assert not [w for w in recwarn if "could not be restored" in str(w.message)]
    assert r.step == 3 and r.data_state == {"pos": 31}
    assert_bit_equal(r.state, new3)


def test_saving_an_older_step_drops_the_abandoned_timeline(tmp_path):
    with Checkpointer(tmp_path, keep=5) as ck:
        save_steps(ck, [1, 2, 3, 4])
        ck.save(2, make_state(99), data_state={"pos": -2})  # same step as an existing one: overwrite
        assert ck.steps() == [1, 2]
        r = ck.restore(make_state(0))
        assert r.step == 2 and r.data_state == {"pos": -2}
        assert_bit_equal(r.state, make_state(99))
        save_steps(ck, [3])
        assert ck.steps() == [1, 2, 3]


def test_all_corrupt_raises_listing_each(tmp_path):
    with Checkpointer(tmp_path) as ck:
        save_steps(ck, [1, 2])
        corrupt(tmp_path / "1", "garbage")
        corrupt(tmp_path / "2", "missing_item")
        with pytest.warns(UserWarning), pytest.raises(RuntimeError) as info:
            ck.restore(make_state(0))
    msg = str(info.value)
    assert "step 2: KeyError" in msg and "step 1: ValueError" in msg


def test_target_of_another_shape_raises(tmp_path):
    with Checkpointer(tmp_path) as ck:
        save_steps(ck, [1])
        wrong = make_state(0)
        wrong["params"]["w"] = np.zeros((4, 3), np.float32)
        with pytest.raises(RuntimeError, match="checkpoint step 1"):
            ck.restore(wrong, step=1)


def test_empty_directory_restore_raises(tmp_path):
    with Checkpointer(tmp_path) as ck, pytest.raises(RuntimeError, match="no complete checkpoint"):
        ck.restore(make_state(0))


@pytest.mark.parametrize("tmp_name", ["3" + TMP_SUFFIX, "3" + TMP_SUFFIX + "-1700000000"])
def test_interrupted_save_leftover_is_ignored(tmp_path, tmp_name):
    ck = Checkpointer(tmp_path / "ck")
    save_steps(ck, [1, 2])
    # What a save killed before its final rename leaves: a full-looking step under the temporary name,
    # and (for the older naming with a timestamp) a half-written one.
    leftover = tmp_path / "ck" / tmp_name
    shutil.copytree(tmp_path / "ck" / "2", leftover)
    corrupt(leftover, "garbage")
    assert ck.steps() == [1, 2] and ck.latest_step() == 2
    r = ck.restore(make_state(0))
    assert r.step == 2
    ck.close()
    with Checkpointer(tmp_path / "ck") as ck2:  # also after reopening
        assert ck2.steps() == [1, 2]
        save_steps(ck2, [3])  # saving the interrupted step again works
        r = ck2.restore(abstract(make_state(0)))
    assert r.step == 3
    assert_bit_equal(r.state, make_state(3))


def test_reopen_sees_old_steps_and_keeps_pruning(tmp_path):
    with Checkpointer(tmp_path / "run" / "checkpoints", keep=3) as ck:  # parent directories created
        save_steps(ck, [1, 2, 3])
    with Checkpointer(str(tmp_path / "run" / "checkpoints"), keep=3) as ck:
        assert ck.steps() == [1, 2, 3] and ck.latest_step() == 3
        r = ck.restore(make_state(0), step=1)
        assert_bit_equal(r.state, make_state(1))
        save_steps(ck, [4])
        assert ck.steps() == [2, 3, 4]


def test_bad_arguments_raise_before_writing(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        Checkpointer(tmp_path, keep=0)
    ck = Checkpointer(tmp_path)
    with pytest.raises(ValueError, match="step"):
        ck.save(-1, make_state(0), data_state={})
    with pytest.raises(ValueError, match="step"):
        ck.save(1.5, make_state(0), data_state={})
    with pytest.raises(ValueError, match="data_state"):
        ck.save(1, make_state(0), data_state=[1, 2])
    with pytest.raises(ValueError, match="meta"):
        ck.save(1, make_state(0), data_state={}, meta={"x": object()})
    with pytest.raises(ValueError, match=r"state\['a'\]"):
        ck.save(1, {"a": "text"}, data_state={})
    with pytest.raises(ValueError, match="no array leaves"):
        ck.save(1, {}, data_state={})
    assert ck.steps() == [] and list(tmp_path.iterdir()) == []  # nothing half-written
    save_steps(ck, [1])
    with pytest.raises(ValueError, match="target"):
        ck.restore({"x": "nope"})
    with pytest.raises(ValueError, match="step"):
        ck.restore(make_state(0), step=-3)
    ck.close()
    with pytest.raises(RuntimeError, match="closed"):
        ck.steps()
    ck.close()  # idempotent
