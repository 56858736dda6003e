"""Decode state as an artifact: save_state / load_state / fork, and generate's state options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import config
from scaling.inference import (
    StateError,
    fork,
    generate,
    load_state,
    read_state_info,
    save_state,
    state_nbytes,
    state_path,
)
from scaling.models import build
from tests.helpers import rel_err

SHRINK = ["model.d_model=32", "model.n_layers=2", "model.retention.chunk_size=8", "model.mamba.chunk_size=8",
          "model.mamba.head_dim=16", "model.mamba.d_state=8", "model.retention.n_heads=4",
          "model.attention.n_heads=4", "model.attention.n_kv_heads=2"]
MIXERS = {
    "attention": ["model.pattern='A'"],
    "retention": ["model.pattern='R'", "model.retention.n_kv_heads=2"],
    "retention_conv": ["model.pattern='R'", "model.retention.n_kv_heads=2", "model.retention.conv=4"],
    "mamba": ["model.pattern='M'"],
    "hybrid": ["model.pattern='MRA'", "model.n_layers=3"],
    "gla": ["model.pattern='G'", "model.gla.chunk_size=8", "model.gla.conv=4"],
    "gated_delta": ["model.pattern='D'", "model.gated_delta.chunk_size=8"],
    "based": ["model.pattern='B'", "model.based.chunk_size=8", "model.based.feature_dim=4", "model.based.window=6",
              "model.based.conv=3"],
}
PROMPT, MAX_LEN = 13, 24

_prefill = nnx.jit(lambda m, x, s: m.prefill(x, s))
_step = nnx.jit(lambda m, x, s: m.step(x, s))
_forward = nnx.jit(lambda m, x: m(x))


def _model(name, extra=()):
    cfg = config.load(None, SHRINK + MIXERS[name] + list(extra))
    return cfg, build(cfg.model, seed=1)


def _tokens(b, t, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, 256)


def _decode(model, state, tokens):
    """Step through tokens [b, n]; returns (logits [b, n, V], state)."""
    out = []
    for i in range(tokens.shape[1]):
        lg, state = _step(model, tokens[:, i], state)
        out.append(lg)
    return jnp.stack(out, axis=1), state


@pytest.mark.parametrize("name", list(MIXERS))
def test_prefill_save_load_step_equals_one_pass(name, tmp_path):
    cfg, model = _model(name)
    tokens = _tokens(1, MAX_LEN)
    full = _forward(model, tokens)  # the uninterrupted forward pass

    logits, state = _prefill(model, tokens[:, :PROMPT], model.init_state(1, MAX_LEN))
    path = save_state(tmp_path / "prompt", state, logits=logits[:, -1], model_cfg=cfg.model, meta={"note": name})
    assert path.name == "prompt.npz" and not list(tmp_path.glob("*.tmp"))
    uninterrupted, _ = _decode(model, state, tokens[:, PROMPT:])

    loaded, info = load_state(path, model.init_state(1, MAX_LEN), model_cfg=cfg.model, with_info=True)
    assert info.pos == PROMPT and info.batch == 1 and info.meta == {"note": name}
    np.testing.assert_array_equal(info.logits, np.asarray(logits[:, -1]))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
    resumed, _ = _decode(model, loaded, tokens[:, PROMPT:])
    np.testing.assert_allclose(np.asarray(resumed), np.asarray(uninterrupted), rtol=0, atol=1e-5)
    # and both continue the forward pass (prefill and step use the chunked / recurrent forms)
    assert rel_err(resumed, full[:, PROMPT:]) < 1e-4
    assert rel_err(logits, full[:, :PROMPT]) < 1e-4


@pytest.mark.slow
def test_short_kv_cache_grows_on_load(tmp_path):
    """A prompt-sized attention cache loads into a longer one: slots keep their positions."""
    cfg, model = _model("hybrid")
    tokens = _tokens(1, MAX_LEN, seed=3)
    _, state = _prefill(model, tokens[:, :PROMPT], model.init_state(1, PROMPT))
    save_state(tmp_path / "s.npz", state, model_cfg=cfg.model)
    loaded = load_state(tmp_path / "s.npz", model.init_state(1, MAX_LEN), model_cfg=cfg.model)
    assert loaded["layers"][2].k.shape[1] == MAX_LEN
    resumed, _ = _decode(model, loaded, tokens[:, PROMPT:])
    assert rel_err(resumed, _forward(model, tokens)[:, PROMPT:]) < 1e-4


@pytest.mark.slow
def test_loading_into_the_wrong_model_is_a_clear_error(tmp_path):
    cfg, model = _model("hybrid")
    _, state = _prefill(model, _tokens(1, PROMPT), model.init_state(1, MAX_LEN))
    path = save_state(tmp_path / "s.npz", state, model_cfg=cfg.model)

    other_cfg, other = _model("retention")
    with pytest.raises(StateError, match="holds layers .*MambaState.* but the model's state has .*RetentionState"):
        load_state(path, other.init_state(1, MAX_LEN))
    bigger_cfg, bigger = _model("hybrid", ["model.mamba.d_state=16"])
    msg = r"layer 0 \(MambaState\): conv is float32\[1, 3, 80\] in the file, the model expects float32\[1, 3, 96\]"
    with pytest.raises(StateError, match=msg):
        load_state(path, bigger.init_state(1, MAX_LEN))
    with pytest.raises(StateError, match="saved from another model"):
        load_state(path, model.init_state(1, MAX_LEN), model_cfg=bigger_cfg.model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(StateError, match="not readable as a statescale state"):
        load_state(tmp_path / "junk.npz")
    with pytest.raises(StateError, match="must be a LanguageModel decode state"):
        save_state(tmp_path / "x.npz", {"layers": ()})


def test_save_is_atomic_and_replaces(tmp_path):
    cfg, model = _model("retention")
    s0 = model.init_state(1, 4)
    _, s1 = _prefill(model, _tokens(1, 5), s0)
    path = save_state(tmp_path / "s.npz", s0)
    with pytest.raises(StateError, match="JSON-serialisable"):
        save_state(path, s1, meta={"bad": object()})  # fails before writing: the old file stays whole
    assert read_state_info(path).pos == 0 and not list(tmp_path.glob(".*tmp"))
    save_state(path, s1)
    assert read_state_info(path).pos == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


@pytest.mark.parametrize("name", ["hybrid", "retention"])
def test_fork_gives_independent_continuations(name):
    """A prefilled batch-1 state forked into 3 rows, each fed its own tokens, equals each row run alone."""
    _, model = _model(name)
    prompt = _tokens(1, PROMPT, seed=5)
    _, state = _prefill(model, prompt, model.init_state(1, MAX_LEN))
    forked = fork(state, 3)
    assert all(x.shape[0] == 3 for x in jax.tree.leaves(forked["layers"]) if x.ndim)
    conts = _tokens(3, 6, seed=6)
    together, _ = _decode(model, forked, conts)
    for r in range(3):
        alone, _ = _decode(model, state, conts[r: r + 1])
        np.testing.assert_allclose(np.asarray(together[r]), np.asarray(alone[0]), rtol=0, atol=1e-5)
    assert not np.allclose(np.asarray(together[0]), np.asarray(together[1]))  # the rows really diverged
    two = fork(forked, 2)  # rows repeat in place: r -> 2r, 2r + 1
    np.testing.assert_array_equal(np.asarray(two["layers"][0][0][4]), np.asarray(forked["layers"][0][0][2]))
    with pytest.raises(ValueError, match="n = 0"):
        fork(state, 0)


@pytest.mark.parametrize("name,grows", [("retention", False), ("mamba", False), ("attention", True)])
def test_state_bytes_do_not_grow_with_generated_tokens_for_recurrent_mixers(name, grows):
    _, model = _model(name)
    sizes = []
    for n in (8, 64):
        stats = {}
        generate(model, "ab", n, temperature=1.0, seed=0, stats=stats)
        sizes.append(stats["state_bytes"])
    assert (sizes[1] > sizes[0]) == grows, sizes
    if not grows:
        _, state = _prefill(model, _tokens(1, 3), model.init_state(1, 3))
        assert sizes[0] == state_nbytes(state)


@pytest.mark.slow
def test_generate_saves_and_continues_from_a_state(tmp_path):
    cfg, model = _model("hybrid")
    one = generate(model, "def f(x):", 10, temperature=0, model_cfg=cfg.model, save_state_to=tmp_path / "p.npz")
    again = generate(model, "", 10, temperature=0, model_cfg=cfg.model, load_state_from=tmp_path / "p.npz")
    assert again == one
    # a prompt split in two: prefill the first part, save, then continue with the second part
    assert generate(model, "def f", 0, save_state_to=tmp_path / "half.npz") == ""  # prefill only
    rest = generate(model, "(x):", 10, temperature=0, load_state_from=tmp_path / "half.npz")
    assert rest == one
    save_state(tmp_path / "nologits.npz", model.init_state(1, 4))
    with pytest.raises(StateError, match="no logits"):
        generate(model, "", 4, load_state_from=tmp_path / "nologits.npz")


def test_load_state_takes_the_path_given_to_save_state(tmp_path):
    """numpy appends .npz: ``save_state("state")`` writes state.npz, and "state" and "state.npz" both read it."""
    import argparse

    from scaling.cli_errors import check_generate

    cfg, model = _model("retention")
    _, s1 = _prefill(model, _tokens(1, 5), model.init_state(1, 8))
    written = save_state(tmp_path / "state", s1, model_cfg=cfg.model)
    assert written == tmp_path / "state.npz" == state_path(tmp_path / "state") == state_path(written)
    for given in (tmp_path / "state", tmp_path / "state.npz", str(tmp_path / "state")):
        assert read_state_info(given).pos == 5
        loaded = load_state(given, model.init_state(1, 8), model_cfg=cfg.model)
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(s1), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    save_state(tmp_path / "other.npz", s1)  # and the other way round
    assert read_state_info(tmp_path / "other").pos == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.npz", "state.npz"]
    with pytest.raises(FileNotFoundError, match="missing.npz' does not exist"):
        load_state(tmp_path / "missing")
    # generate's save_state_to / load_state_from (scaling generate --save-state / --load-state) likewise
    one = generate(model, "def f(x):", 6, temperature=0, model_cfg=cfg.model, save_state_to=tmp_path / "p")
    assert generate(model, "", 6, temperature=0, model_cfg=cfg.model, load_state_from=tmp_path / "p") == one
    flags = dict(max_tokens=4, temperature=0.0, top_k=0, top_p=1.0, save_state=None)
    assert check_generate(argparse.Namespace(load_state=str(tmp_path / "p"), **flags)) is None
    assert check_generate(argparse.Namespace(load_state=str(tmp_path / "p.npz"), **flags)) is None
    assert "no such file" in check_generate(argparse.Namespace(load_state=str(tmp_path / "q"), **flags))


def test_generate_with_a_file_tokenizer_encodes_decodes_and_streams(tmp_path):
    from scaling.data.bpe import load_tokenizer, train_bpe

    info = train_bpe("stdlib", tmp_path, vocab_size=300, max_bytes=20_000)
    tok = load_tokenizer(info["out"])
    cfg, model = _model("retention", ["model.vocab_size=300"])
    streamed, stats = [], {}
    text = generate(model, "def f(x):", 12, temperature=1.0, seed=3, text_tokenizer=tok, on_text=streamed.append,
                    stats=stats)
    assert "".join(streamed) == text and stats["generated"] <= 12
    assert stats["prompt_tokens"] == 1 + len(tok.tok.encode("def f(x):", add_special_tokens=False).ids)  # BOS
    # a prompt split in two through a saved state continues like the whole prompt (greedy)
    whole = generate(model, "def f(x):", 8, temperature=0, text_tokenizer=tok, model_cfg=cfg.model)
    generate(model, "def", 0, text_tokenizer=tok, save_state_to=tmp_path / "s.npz", model_cfg=cfg.model)
    ids = lambda s: tok.tok.encode(s, add_special_tokens=False).ids
    assert ids("def") + ids(" f(x):") == ids("def f(x):")  # a split between pre-tokenizer words
    rest = generate(model, " f(x):", 8, temperature=0, text_tokenizer=tok, load_state_from=tmp_path / "s.npz",
                    model_cfg=cfg.model)
    assert rest == whole


@pytest.mark.slow
def test_cli_generate_saves_and_loads_a_state_by_the_same_path(tmp_path, capsys):
    """``scaling generate RUN --save-state state`` then ``--load-state state`` (the file is state.npz)."""
    from scaling import cli
    from scaling.train import train

    cfg = config.load(None, SHRINK + MIXERS["retention"] + [
        "train.steps=2", "train.batch_size=2", "train.context=16", "train.warmup_steps=1", "train.log_every=1",
        "train.eval_every=2", "train.checkpoint_every=2", "data.eval_tokens=64"])
    run = tmp_path / "run"
    assert train(cfg, run, progress=False).status == "done"
    common = ["generate", str(run), "--temperature", "0", "--quiet"]
    assert cli.main([*common, "--prompt", "def f", "--max-tokens", "0", "--save-state", str(tmp_path / "state")]) == 0
    assert f"saved to {tmp_path / 'state.npz'}" in capsys.readouterr().err
    assert cli.main([*common, "--prompt", "(x):", "--max-tokens", "4", "--load-state", str(tmp_path / "state")]) == 0
    assert cli.main([*common, "--max-tokens", "4", "--load-state", str(tmp_path / "state.npz")]) == 0
    assert "error" not in capsys.readouterr().err
