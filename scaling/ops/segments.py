"""Document boundaries in packed rows, read the same way by every mixer.

A packed row holds several documents. ``segment_ids [batch, time]`` (int) labels each token with its
document: 1, 2, ... within the row and 0 for padding (scaling.data.pipeline). A *document* is a run of equal
ids: one starts wherever the id differs from the token before. The mixers make the documents of a row
independent: attention masks every (query, key) pair in different runs, and the recurrent mixers (power
retention, SSD, the short causal conv) restart from a zero state at the first token of every run.

An ``initial_state`` handed to an op (tokens of an earlier call) belongs to the call's *first* run, so a call
whose first token continues the document of the previous call resumes it, and one over several documents
hands back a state holding only its last run (ready for the next call to continue that document).

Everything here is built from comparisons of run indices: no log-decay of -inf is ever formed, so the gated
mixers take exp only of finite, non-positive sums and their gradients stay finite.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def check_segment_ids(segment_ids, batch: int, time: int, fn: str):
    """segment_ids as an int32 [batch, time] array, or None; raises ValueError naming ``fn``."""
    if segment_ids is None:
        return None
    segment_ids = jnp.asarray(segment_ids)
    if segment_ids.shape != (batch, time) or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(f"{fn}: segment_ids must be an integer [batch, time] = {(batch, time)} array, got "
                         f"{segment_ids.dtype} {tuple(segment_ids.shape)}")
    return segment_ids.astype(jnp.int32)


def resets(segment_ids):
    """[batch, time] bool: the token starts a new document (its id differs from the previous token's).

    The first token of the call is never a reset: it continues whatever state the call starts from.
    """
    first = jnp.zeros_like(segment_ids[:, :1], dtype=bool)
    return jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def run_index(segment_ids):
    """[batch, time] int32: the index of each token's run within the call, 0 for the first run."""
    return jnp.cumsum(resets(segment_ids), axis=1, dtype=jnp.int32)


def run_start(segment_ids):
    """[batch, time] int32: the index (within the call) of the first token of each token's run."""
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
    return jax.lax.cummax(jnp.where(resets(segment_ids), t, 0), axis=1)


def positions_in_document(segment_ids):
    """[batch, time] int32 positions that restart at 0 at every run (each document as if run alone)."""
    return jnp.arange(segment_ids.shape[1], dtype=jnp.int32) - run_start(segment_ids)


class ChunkMasks(NamedTuple):
    """Where state may flow inside chunks of c tokens; every field is bool over [batch, n_chunks, ...].

    same:       [b, n, c, c]  tokens i and j of a chunk are in the same run (the intra-chunk block);
    from_start: [b, n, c]     the state entering the chunk reaches token i (no run starts in 0..i);
    to_end:     [b, n, c]     token j reaches the state leaving the chunk (j is in the chunk's last run);
    through:    [b, n]        the entering state survives the whole chunk (no run starts in it).
    """

    same: jax.Array
    from_start: jax.Array
    to_end: jax.Array
    through: jax.Array


def chunk_masks(segment_ids, n_chunks: int, chunk: int) -> ChunkMasks:
    """Masks of ``segment_ids [b, t]`` split into ``n_chunks`` chunks of ``chunk`` tokens (the tail padded with
    tokens that start nothing, as the ops pad time)."""
    r = resets(segment_ids)
    pad = n_chunks * chunk - r.shape[1]
    r = jnp.pad(r, [(0, 0), (0, pad)]).reshape(r.shape[0], n_chunks, chunk)
    local = jnp.cumsum(r, axis=2, dtype=jnp.int32)  # runs started so far in the chunk, 0 = the entering one
    return ChunkMasks(
        same=local[..., :, None] == local[..., None, :],
        from_start=local == 0,
        to_end=local == local[..., -1:],
        through=local[..., -1] == 0,
    )
