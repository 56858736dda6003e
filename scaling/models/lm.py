"""LanguageModel: embed (-> norm, model.embed_norm) -> blocks (mixer, then SwiGLU MLP unless model.mlp is False;
pre-norm residual) -> norm -> head.

Decode API (every pattern):
    state = model.init_state(batch, max_len)
    logits, state = model.prefill(tokens, state)   # tokens [batch, time]
    logits, state = model.step(token, state)       # token [batch] or [batch, 1]
The state is a pytree: {"pos": int32 scalar, "layers": tuple of per-layer mixer states}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scaling import config as _config
from scaling.models.layers import RMSNorm, SwiGLU, dense, dtypes
from scaling.models.registry import MIXERS
from scaling.ops.segments import positions_in_document


class Block(nnx.Module):
    def __init__(self, m, letter: str, rngs: nnx.Rngs):
        _, param_dtype = dtypes(m)
        self.letter = letter
        self.norm1 = RMSNorm(m.d_model, m.norm_eps, param_dtype)
        self.mixer = MIXERS[letter].module(m, rngs)
        if m.get("mlp", True):  # model.mlp = False: the mixer alone (Mamba's blocks)
            self.norm2 = RMSNorm(m.d_model, m.norm_eps, param_dtype)
            self.mlp = SwiGLU(m, _config.d_ff(m), rngs)
        else:
            self.mlp = nnx.data(None)

    def _ffn(self, x):
        return x if self.mlp is None else x + self.mlp(self.norm2(x))

    def __call__(self, x, positions, state=None, *, decode: bool = False, segment_ids=None, blend=None):
        if state is None:
            kw = {"blend": blend} if blend is not None and self.letter == "R" else {}
            return self._ffn(x + self.mixer(self.norm1(x), positions, segment_ids=segment_ids, **kw))
        h, state = self.mixer(self.norm1(x), positions, state, decode=decode)
        return self._ffn(x + h), state


class LanguageModel(nnx.Module):
    """A decoder-only language model whose layer types follow ``cfg.pattern`` (A, R, M)."""

    def __init__(self, m, rngs: nnx.Rngs):
        self.dtype, param_dtype = dtypes(m)
        self.pattern = _config.layer_pattern(m)
        # The lookup returns float32: the residual stream is float32 whatever the compute dtype (each block adds
        # its mixer's and MLP's outputs to it); the projections cast their inputs to the compute dtype.
        self.embed = nnx.Embed(m.vocab_size, m.d_model, rngs=rngs, dtype=jnp.float32, param_dtype=param_dtype,
                               embedding_init=nnx.initializers.normal(m.init_std))
        # model.embed_norm: a norm on the embeddings before the first block (the residual stream starts normalised)
        self.embed_norm = nnx.data(RMSNorm(m.d_model, m.norm_eps, param_dtype) if m.get("embed_norm") else None)
        blocks = [Block(m, letter, rngs) for letter in self.pattern]
        if m.get("scan_layers"):
            # model.scan_layers: the whole repeats of the pattern run under one lax.scan (compile time flat in
            # depth): the block at position j of the pattern is stored once, its parameters stacked over the
            # repeats [repeats, ...] (initialised as the unstacked model's, layer by layer: the same logits);
            # a cut pattern's last layers stay unstacked in ``blocks``.
            u = len(m.pattern)
            self.repeats = m.n_layers // u
            for j in range(u):
                group = blocks[j: self.repeats * u: u]
                nnx.update(group[0], jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.state(b) for b in group)))
            self.stack = nnx.List(blocks[:u])
            blocks = blocks[self.repeats * u:]
        self.blocks = nnx.List(blocks)
        self.norm = RMSNorm(m.d_model, m.norm_eps, param_dtype)
        self.head = nnx.data(None if m.tie_embeddings else dense(m, m.d_model, m.vocab_size, rngs, out_float32=True))

    def _embed(self, tokens):
        x = self.embed(tokens)
        return x if self.embed_norm is None else self.embed_norm(x)

    def logits(self, x):
        """The final norm, then the head (or the tied embedding) in the compute dtype, accumulated in float32."""
        x = self.norm(x)
        if self.head is not None:
            return self.head(x).astype(jnp.float32)
        emb = self.embed.embedding[...]
        return jnp.dot(x.astype(self.dtype), emb.astype(self.dtype).T, preferred_element_type=jnp.float32)

    def __call__(self, tokens, segment_ids=None, positions=None, *, remat: str | None = None, blend=None):
        """tokens [batch, time] int -> logits [batch, time, vocab] float32.

        Packed rows (scaling.data.pipeline): ``segment_ids`` [batch, time] int labels each token's document
        (a run of equal ids; 0 = padding) and makes the documents of a row independent: no attention across
        them, and every recurrent state (retention, SSD, the short convs) restarts from zero at a document's
        first token, so each position's logits are those of its document run alone (scaling.ops.segments).
        ``positions`` [batch, time] int (RoPE) is each token's index within its document; by default
        0, 1, ... over the row, or, with segment_ids, restarting at 0 at every document start.
        ``remat`` (train.remat): None or "none" keeps every activation for the backward pass; "block" recomputes
        each block's activations from its input (jax.checkpoint around each block); a name of
        ``jax.checkpoint_policies`` (e.g. "dots_saveable") does the same but keeps what the policy saves.
        ``blend`` [batch] float (train.blend_steps): each power retention layer outputs (1 - blend) softmax
        attention + blend retention of its q, k, v (PowerCoder-style metamorphosis); None: retention alone.
        """
        if positions is None:
            positions = (jnp.arange(tokens.shape[1]) if segment_ids is None
                         else positions_in_document(jnp.asarray(segment_ids)))
        x = self._embed(tokens)

        def run(block, x, positions, segment_ids):
            return block(x, positions, segment_ids=segment_ids, blend=blend)

        if remat not in (None, "none"):
            policy = None if remat == "block" else getattr(jax.checkpoint_policies, remat)

            def run(block, x, positions, segment_ids):  # the block as (structure, state): a pure function
                graphdef, state = nnx.split(block)
                fn = lambda state, x, positions, segment_ids: nnx.merge(graphdef, state)(
                    x, positions, segment_ids=segment_ids, blend=blend)
                return jax.checkpoint(fn, policy=policy)(state, x, positions, segment_ids)
        if hasattr(self, "stack"):
            graphdefs, states = zip(*(nnx.split(b) for b in self.stack), strict=True)

            def body(x, states):  # one repeat of the pattern
                for graphdef, state in zip(graphdefs, states, strict=True):
                    x = run(nnx.merge(graphdef, state), x, positions, segment_ids)
                return x, None

            x, _ = jax.lax.scan(body, x, tuple(states))
        for block in self.blocks:
            x = run(block, x, positions, segment_ids)
        return self.logits(x)

    def layers(self) -> list:
        """The blocks in layer order (with scan_layers, each a slice of the stacked parameters)."""
        if not hasattr(self, "stack"):
            return list(self.blocks)
        split = [nnx.split(b) for b in self.stack]
        return [nnx.merge(graphdef, jax.tree.map(lambda a, r=r: a[r], state))
                for r in range(self.repeats) for graphdef, state in split] + list(self.blocks)

    def init_state(self, batch: int, max_len: int):
        """Decode state for ``batch`` sequences of up to ``max_len`` tokens (attention's cache size)."""
        return {
            "pos": jnp.zeros((), jnp.int32),
            "layers": tuple(b.mixer.init_state(batch, max_len) for b in self.layers()),
        }

    def _run(self, tokens, state, decode: bool):
        positions = state["pos"] + jnp.arange(tokens.shape[1])
        x = self._embed(tokens)
        new_layers = []
        for block, s in zip(self.layers(), state["layers"], strict=True):
            x, s = block(x, positions, s, decode=decode)
            new_layers.append(s)
        state = {"pos": state["pos"] + tokens.shape[1], "layers": tuple(new_layers)}
        return self.logits(x), state

    def prefill(self, tokens, state):
        """Process a prompt [batch, time] with the chunked forms; returns (logits [b, t, V], state)."""
        return self._run(tokens, state, decode=False)

    def step(self, token, state):
        """One token [batch] (or [batch, 1]) with the recurrent forms; returns (logits [b, V], state)."""
        token = jnp.asarray(token)
        token = token[:, None] if token.ndim == 1 else token
        logits, state = self._run(token, state, decode=True)
        return logits[:, -1], state


def build(model_cfg, *, seed: int = 0) -> LanguageModel:
    """Validate ``model_cfg`` and build its LanguageModel with parameters from ``seed``."""
    _config.validate_model(model_cfg)
    return LanguageModel(model_cfg, nnx.Rngs(params=seed))


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
