"""Sampling from a LanguageModel with its decode state (KV cache for attention, recurrent state otherwise),
and the decode state as an artifact.

``generate`` prefills the prompt with the chunked forms once, then steps token by token with the
recurrent forms, so memory is constant in the number of generated tokens for recurrent mixers.

State artifacts. ``save_state(path, state, logits=..., model_cfg=...)`` writes the state pytree of
``LanguageModel.init_state / prefill / step`` to one ``.npz`` file, atomically (a temporary file in the same
directory, then ``os.replace``); ``.npz`` is appended to a path without it, and every reader takes the path
given to ``save_state``, with or without the suffix (:func:`state_path`).
``load_state(path, like=..., model_cfg=...)`` reads it back and checks it
against the model it is loaded into: the model config's hash, the layer kinds, every leaf's shape and dtype
(a clear ``StateError`` otherwise). ``fork(state, n)`` copies a state into n rows for parallel
continuations. File format (``FORMAT``, a contract, see docs/architecture.md):

    __meta__          a 0-d unicode array holding JSON: {"format": "statescale.state/1", "pos": int,
                      "batch": int, "layers": ["KVCache" | "RetentionState" | "ConvRetentionState" |
                      "MambaState" | "GLAState" | "GatedDeltaState" |
                      "BasedLayerState", ...],
                      "leaves": {name: [dtype, shape]}, "model_hash": str | null, "model": {pattern,
                      n_layers, d_model} | null, "has_logits": bool, "meta": {...}}
    pos               int32 [], tokens processed so far
    layers.<i>.<field>   each layer state's arrays (KVCache: k, v, pos; RetentionState: S, z;
                      ConvRetentionState: S, z, conv; MambaState: conv, ssm; GLAState: S;
                      GatedDeltaState: S, conv; BasedLayerState: S, z, k, v, pos), in their own dtypes
    logits            float32 [batch, vocab] (optional): the logits after the last token, so a
                      continuation can sample its next token without recomputing them
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scaling.data import tokenizer
from scaling.models.registry import MIXERS
from scaling.ops.attention import KVCache

FORMAT = "statescale.state/1"
# every mixer module's decode-state types, by name (a new mixer's states come with its module)
LAYER_STATES = {cls.__name__: cls for mixer in MIXERS.values() for cls in mixer.module.state_types}


class StateError(ValueError):
    """A state file is unreadable or does not fit the model it is loaded into."""


class StateInfo(NamedTuple):
    """What a state file says besides the arrays: position, saved logits, model hash and user meta."""

    pos: int
    batch: int
    layers: tuple[str, ...]
    logits: np.ndarray | None
    model_hash: str | None
    meta: dict


def model_hash(model_cfg) -> str:
    """A stable hash of a model config (sorted JSON of its fields): what a state file records."""
    d = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _layer_kinds(state) -> tuple[str, ...]:
    kinds = []
    for i, s in enumerate(state["layers"]):
        name = type(s).__name__
        if name not in LAYER_STATES:
            raise StateError(f"state['layers'][{i}] is a {name}; layer states are {', '.join(LAYER_STATES)}")
        kinds.append(name)
    return tuple(kinds)


def _check_state(state) -> None:
    if not isinstance(state, dict) or set(state) != {"pos", "layers"}:
        raise StateError("state must be a LanguageModel decode state: a dict {'pos', 'layers'} "
                         f"(from model.init_state / prefill / step), got {type(state).__name__}"
                         + (f" with keys {sorted(state)}" if isinstance(state, dict) else ""))


def state_batch(state) -> int:
    """Number of sequences (rows) a decode state holds."""
    _check_state(state)
    for leaf in jax.tree.leaves(state["layers"]):
        if np.ndim(leaf) >= 1:
            return int(np.shape(leaf)[0])
    raise StateError("state has no batched arrays")


def state_nbytes(state) -> int:
    """Bytes held by a state's arrays (what decoding keeps in memory besides the parameters)."""
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))


def _arrays(state) -> dict[str, np.ndarray]:
    out = {"pos": np.asarray(state["pos"])}
    for i, s in enumerate(state["layers"]):
        for field in s._fields:
            out[f"layers.{i}.{field}"] = np.asarray(getattr(s, field))
    return out


def save_state(path, state, *, logits=None, model_cfg=None, meta: dict | None = None) -> Path:
    """Write a decode state (and optionally the logits after its last token) to ``path`` (.npz), atomically.

    Args:
      state: the pytree of ``model.init_state / prefill / step``.
      logits: [batch, vocab] logits after the last token (``prefill(...)[0][:, -1]`` or ``step``'s), or None.
      model_cfg: the model config the state belongs to; its hash is recorded and checked on load.
      meta: a small JSON dict kept with the state (e.g. the prompt).
    Returns the path written (``.npz`` appended if missing: :func:`state_path`).
    """
    _check_state(state)
    kinds = _layer_kinds(state)
    batch = state_batch(state)
    arrays = _arrays(state)
    if logits is not None:
        logits = np.asarray(logits, np.float32)
        if logits.ndim != 2 or logits.shape[0] != batch:
            raise StateError(f"logits must be [batch, vocab] with batch {batch}, got shape {logits.shape}")
        arrays["logits"] = logits
    info = {
        "format": FORMAT, "pos": int(arrays["pos"]), "batch": batch, "layers": list(kinds),
        "leaves": {k: [str(v.dtype), list(v.shape)] for k, v in arrays.items()},
        "model_hash": None if model_cfg is None else model_hash(model_cfg),
        "model": None if model_cfg is None else {k: model_cfg[k] for k in ("pattern", "n_layers", "d_model")},
        "has_logits": logits is not None, "meta": dict(meta or {}),
    }
    try:
        blob = json.dumps(info)
    except TypeError as e:
        raise StateError(f"meta must be JSON-serialisable: {e}") from None
    path = state_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __meta__=np.array(blob), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def state_path(path) -> Path:
    """The file a state saved to or loaded from ``path`` lives in: ``path`` itself if it ends in ``.npz``, else
    ``path`` with ``.npz`` appended (as numpy writes it). :func:`save_state`, :func:`load_state` and
    :func:`read_state_info` all take either, so the path given to one works for the others."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def read_state_info(path) -> StateInfo:
    """The header of a state file (no arrays besides the logits)."""
    return _open(path)[1]


def _open(path):
    path = state_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        info = json.loads(str(arrays.pop("__meta__")))
    except Exception as e:  # zip, npy or JSON damage: the file is not a state artifact
        raise StateError(f"state file {str(path)!r} is not readable as a statescale state: "
                         f"{type(e).__name__}: {e}") from None
    if info.get("format") != FORMAT:
        raise StateError(f"state file {str(path)!r} has format {info.get('format')!r}; this version reads {FORMAT!r}")
    logits = arrays.pop("logits", None)
    return arrays, StateInfo(pos=int(info["pos"]), batch=int(info["batch"]), layers=tuple(info["layers"]),
                             logits=logits, model_hash=info.get("model_hash"), meta=info.get("meta", {})), info


def load_state(path, like=None, *, model_cfg=None, with_info: bool = False):
    """Read a state written by :func:`save_state`.

    Args:
      like: a state of the model it is loaded into (``model.init_state(batch, max_len)``): the layer kinds,
        leaf shapes and dtypes must match, except that an attention KV cache shorter than ``like``'s is
        padded (it holds every token so far, so slots keep their positions); arrays come back on
        ``like``'s devices.
      model_cfg: the model config it is loaded into; must hash to the config the state was saved with
        (when the file recorded one).
      with_info: also return the :class:`StateInfo` (position, saved logits, meta).
    Raises:
      StateError naming the mismatch; FileNotFoundError if ``path`` does not exist.
    """
    arrays, info, raw = _open(path)
    where = f"state file {str(state_path(path))!r}"
    if model_cfg is not None and info.model_hash is not None and info.model_hash != model_hash(model_cfg):
        saved = raw.get("model") or {}
        now = {k: model_cfg[k] for k in ("pattern", "n_layers", "d_model")}
        raise StateError(f"{where} was saved from another model (config hash {info.model_hash}, {saved}); "
                         f"this model's config hashes to {model_hash(model_cfg)} ({now})")
    layers = []
    for i, kind in enumerate(info.layers):
        if kind not in LAYER_STATES:
            raise StateError(f"{where}: layer {i} has unknown state kind {kind!r}")
        cls = LAYER_STATES[kind]
        try:
            layers.append(cls(**{f: arrays[f"layers.{i}.{f}"] for f in cls._fields}))
        except KeyError as e:
            raise StateError(f"{where}: layer {i} ({kind}) misses array {e.args[0]!r}") from None
    state = {"pos": arrays["pos"], "layers": tuple(layers)}
    if like is not None:
        _check_state(like)
        want = _layer_kinds(like)
        if want != info.layers:
            raise StateError(f"{where} holds layers {list(info.layers)} but the model's state has {list(want)}: "
                             "it was saved from a model with another layer pattern")
        state = {"pos": state["pos"], "layers": tuple(
            _fit_layer(s, t, f"{where}: layer {i} ({type(t).__name__})")
            for i, (s, t) in enumerate(zip(state["layers"], like["layers"], strict=True)))}
        state = jax.tree.map(lambda x, t: jax.device_put(jnp.asarray(x), t.sharding) if hasattr(t, "sharding")
                             else jnp.asarray(x), state, like)
    else:
        state = jax.tree.map(jnp.asarray, state)
    return (state, info) if with_info else state


def _fit_layer(saved, target, where):
    if isinstance(saved, KVCache):
        cap, want = saved.k.shape[1], target.k.shape[1]
        if cap < want:
            if int(saved.pos) > cap:
                raise StateError(f"{where}: the cache of {cap} slots has wrapped (it saw {int(saved.pos)} tokens) "
                                 f"and cannot grow to {want}")
            pad = [(0, 0), (0, want - cap), (0, 0), (0, 0)]
            saved = KVCache(np.pad(saved.k, pad), np.pad(saved.v, pad), saved.pos)
    for field in saved._fields:
        a, t = getattr(saved, field), getattr(target, field)
        if tuple(a.shape) != tuple(t.shape) or np.dtype(a.dtype) != np.dtype(t.dtype):
            raise StateError(f"{where}: {field} is {np.dtype(a.dtype)}{list(a.shape)} in the file, the model "
                             f"expects {np.dtype(t.dtype)}{list(t.shape)}")
    return saved


def fork(state, n: int):
    """n continuations of a state: every row repeated n times along the batch (row r -> rows r*n .. r*n+n-1).

    A batch-1 state (one prefilled prompt) becomes n identical rows that then decode independently
    (different samples or different next tokens); JAX arrays are immutable, so no row can affect another.
    """
    _check_state(state)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"fork: n = {n!r}: must be an integer >= 1")
    layers = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0) if jnp.ndim(x) >= 1 else x, state["layers"])
    return {"pos": state["pos"], "layers": layers}


def sample_logits(logits, key, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Sample token ids from logits [batch, vocab]. temperature 0 is greedy; top_k 0 and top_p 1 are off."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jnp.sort(logits, axis=-1)[..., -top_k][..., None]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop_sorted = jnp.cumsum(probs, axis=-1) - probs >= top_p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


def _validate(max_tokens, temperature, top_k, top_p):
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens = {max_tokens!r}: must be an integer >= 0 (0: only prefill the prompt)")
    if temperature < 0:
        raise ValueError(f"temperature = {temperature!r}: must be >= 0 (0 is greedy)")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k = {top_k!r}: must be an integer >= 0 (0 keeps every token)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p = {top_p!r}: must be in (0, 1]")


# Module-level so that repeated calls with one model structure reuse the compiled functions.
_prefill = nnx.jit(lambda m, x, s: m.prefill(x, s))
_step = nnx.jit(lambda m, x, s: m.step(x, s))
_sample = jax.jit(sample_logits, static_argnames=("temperature", "top_k", "top_p"))


def generate(model, prompt: str | bytes, max_tokens: int, *, temperature: float = 0.8, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, on_text: Callable[[str], None] | None = None,
             model_cfg=None, save_state_to=None, load_state_from=None, stats: dict | None = None,
             stop_at_eos: bool = True, text_tokenizer=None) -> str:
    """Continue ``prompt`` by up to ``max_tokens`` bytes; stops early at EOS (unless ``stop_at_eos`` is False,
    when EOS is never sampled: for benchmarks that need exactly ``max_tokens``).

    ``text_tokenizer``: None for the byte tokenizer (scaling.data.tokenizer), else the
    ``scaling.data.bpe.FileTokenizer`` the run's token file was made with (:func:`run_tokenizer`): the prompt is
    encoded, the tokens decoded and EOS / BOS / PAD taken from it, and ``max_tokens`` counts its tokens.

    ``on_text`` receives the text as it is generated (whole UTF-8 characters), for streaming.
    ``load_state_from``: a state file (:func:`save_state`) to continue from; ``prompt`` is then appended to
    what that state has seen (no BOS) and may be empty if the file holds the logits of its last token.
    ``save_state_to``: write the state and logits after the prompt here, before sampling, so later calls
    can continue from it without prefilling the prompt again. ``model_cfg`` is recorded in (and checked
    against) state files. ``stats``, if given, is filled with prompt_tokens, generated, pos and
    state_bytes (the decode state's size after the last token).
    """
    _validate(max_tokens, temperature, top_k, top_p)
    prefill, step = _prefill, _step
    codec = _TextCodec(text_tokenizer) if text_tokenizer is not None else tokenizer
    if load_state_from is None:
        ids = codec.encode(prompt, add_bos=True)[None]
        state = model.init_state(1, ids.shape[1] + max_tokens)
        logits = None
    else:
        ids = codec.encode(prompt)[None]
        saved = read_state_info(load_state_from)
        if saved.batch != 1:
            raise StateError(f"state file {str(load_state_from)!r} holds {saved.batch} sequences; generate "
                             "continues one (use load_state and fork for several)")
        like = model.init_state(1, saved.pos + ids.shape[1] + max_tokens)
        state, info = load_state(load_state_from, like, model_cfg=model_cfg, with_info=True)
        logits = None if info.logits is None else jnp.asarray(info.logits)
        if ids.shape[1] == 0 and logits is None:
            raise StateError(f"state file {str(load_state_from)!r} has no logits of its last token: "
                             "give a non-empty prompt to continue from it")
    sample = functools.partial(_sample, temperature=temperature, top_k=top_k, top_p=top_p)
    # never emit the padding or BOS tokens
    never = [i for i in (codec.PAD, codec.BOS) if i is not None] + ([] if stop_at_eos else [codec.EOS])
    banned = jnp.zeros((model.embed.num_embeddings,), bool).at[jnp.array(never)].set(True)

    if ids.shape[1]:
        logits, state = prefill(model, jnp.asarray(ids), state)
        logits = logits[:, -1]
    if save_state_to is not None:
        save_state(save_state_to, state, logits=logits, model_cfg=model_cfg,
                   meta={"prompt_tail": codec.decode(ids[0, -64:]) if ids.shape[1] else ""})
    key = jax.random.key(seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace") if codec is tokenizer else codec.stream()
    out = []
    for _ in range(max_tokens):
        key, sub = jax.random.split(key)
        tok = int(sample(jnp.where(banned, -jnp.inf, logits), sub)[0])
        if tok == codec.EOS:
            break
        out.append(tok)
        text = decoder.decode(bytes([tok]) if codec is tokenizer else tok)
        if on_text and text:
            on_text(text)
        logits, state = step(model, jnp.asarray([tok]), state)
    tail = decoder.decode(b"" if codec is tokenizer else None, final=True)
    if on_text and tail:
        on_text(tail)
    if stats is not None:
        stats.update(prompt_tokens=int(ids.shape[1]), generated=len(out), pos=int(state["pos"]),
                     state_bytes=state_nbytes(state))
    return codec.decode(np.asarray(out, np.int32))


def run_tokenizer(data_cfg):
    """The tokenizer ``generate`` encodes and decodes with for a run trained on ``data_cfg`` (its data section):
    None for the byte tokenizer, else the FileTokenizer named by the token file's metadata (the path as written
    there, else beside the token file). A ValueError (one line, naming the run's tokenizer) when it cannot be
    found: a raw token file without metadata, or a tokenizer file that is gone or changed."""
    from scaling.data import bpe
    from scaling.data.config import validate_data_config
    from scaling.data.tokens import meta_path, read_metadata, spec_of

    c = validate_data_config(data_cfg)
    if c["source"] != "tokens":
        return None
    spec = spec_of(c)
    if spec.tokenizer == "bytes":
        return None
    refuse = (f"generate decodes byte ids, or with the tokenizer.json named in a token file's metadata; this run "
              f"trained on data.path = {c['path']!r}")
    if spec.tokenizer is None:
        raise ValueError(f"{refuse}, a raw token file without metadata (tokenizer unknown)")
    named = Path(spec.tokenizer).expanduser()
    found = next((p for p in (named, Path(c["path"]).parent / named.name) if p.is_file() or p.is_dir()), None)
    if found is None:
        raise ValueError(f"{refuse} (tokenizer {spec.tokenizer!r}, named in {str(meta_path(c['path']))!r}), "
                         "and that file is not found")
    tok = bpe.load_tokenizer(found)
    if tok.sha256 != read_metadata(c["path"]).get("tokenizer_sha256"):
        raise ValueError(f"{refuse} (tokenizer {spec.tokenizer!r}); {str(found)!r} is not that file any more "
                         "(its sha256 differs from the metadata's)")
    return tok


class _TextCodec:
    """A FileTokenizer behind the byte tokenizer's module interface (encode, decode, PAD / BOS / EOS), with
    ``stream()``: an incremental decoder that holds back text ending in an incomplete character."""

    def __init__(self, tok):
        self.tok, self.PAD, self.BOS, self.EOS = tok.tok, tok.pad_id, tok.bos_id, tok.eos_id

    def encode(self, text: str | bytes, *, add_bos: bool = False) -> np.ndarray:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return np.asarray(([self.BOS] if add_bos and self.BOS is not None else []) + ids, np.int32)

    def decode(self, ids) -> str:
        specials = {self.PAD, self.BOS, self.EOS}
        return self.tok.decode([int(i) for i in ids if int(i) not in specials], skip_special_tokens=True)

    def stream(self):
        return _TokenStream(self)


class _TokenStream:
    """decode(token) -> the text it completes (decoding every token so far, so merges across tokens come out
    right); a trailing U+FFFD (a character whose bytes have not all come) waits for the next token."""

    def __init__(self, codec: _TextCodec):
        self.codec, self.ids, self.done = codec, [], 0

    def decode(self, tok, final: bool = False) -> str:
        if tok is not None:
            self.ids.append(tok)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd") and not final:
            return ""
        new, self.done = text[self.done:], len(text)
        return new
