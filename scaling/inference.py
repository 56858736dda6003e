"""Sampling from a LanguageModel with its decode state (KV cache for attention, recurrent state otherwise).

``generate`` prefills the prompt with the chunked forms once, then steps token by token with the
recurrent forms, so memory is constant in the number of generated tokens for recurrent mixers.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scaling.data import tokenizer


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
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens = {max_tokens!r}: must be an integer >= 1")
    if temperature < 0:
        raise ValueError(f"temperature = {temperature!r}: must be >= 0 (0 is greedy)")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k = {top_k!r}: must be an integer >= 0 (0 keeps every token)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p = {top_p!r}: must be in (0, 1]")


def generate(model, prompt: str | bytes, max_tokens: int, *, temperature: float = 0.8, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, on_text: Callable[[str], None] | None = None) -> str:
    """Continue ``prompt`` by up to ``max_tokens`` bytes; stops early at EOS.

    ``on_text`` receives the text as it is generated (whole UTF-8 characters), for streaming.
    """
    _validate(max_tokens, temperature, top_k, top_p)
    ids = tokenizer.encode(prompt, add_bos=True)[None]
    state = model.init_state(1, ids.shape[1] + max_tokens)
    prefill = nnx.jit(lambda m, x, s: m.prefill(x, s))
    step = nnx.jit(lambda m, x, s: m.step(x, s))
    sample = jax.jit(lambda lg, k: sample_logits(lg, k, temperature=temperature, top_k=top_k, top_p=top_p))
    # never emit the padding or BOS tokens
    banned = jnp.zeros((model.embed.num_embeddings,), bool).at[jnp.array([tokenizer.PAD, tokenizer.BOS])].set(True)

    logits, state = prefill(model, jnp.asarray(ids), state)
    logits = logits[:, -1]
    key = jax.random.key(seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = []
    for _ in range(max_tokens):
        key, sub = jax.random.split(key)
        tok = int(sample(jnp.where(banned, -jnp.inf, logits), sub)[0])
        if tok == tokenizer.EOS:
            break
        out.append(tok)
        text = decoder.decode(bytes([tok]))
        if on_text and text:
            on_text(text)
        logits, state = step(model, jnp.asarray([tok]), state)
    tail = decoder.decode(b"", final=True)
    if on_text and tail:
        on_text(tail)
    return tokenizer.decode(np.asarray(out, np.int32))
