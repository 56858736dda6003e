"""The optimizer and the compiled train and eval steps (used by scaling.train).

* :func:`adamw` / :func:`make_optimizer`: global-norm clipping then AdamW at learning rate 1; the step scales the
  update by the schedule's value, an argument of the step.
* :func:`make_steps`: ``train_step(params, opt_state, batch, lr)`` and ``eval_step(params, batch)``.
  ``microbatches = k`` (train.microbatches) splits the batch into k microbatches under a ``jax.lax.scan``:
  float32 gradients of each microbatch's summed loss are accumulated, with its loss sum and loss-token count,
  and divided by the whole batch's loss-token count, so the update is the full batch's (a mean over all of
  its loss tokens, however unevenly padding falls between microbatches). ``remat`` (train.remat) recomputes
  each block's activations in the backward pass (scaling.models.lm.LanguageModel). ``donate``: the step takes
  over the buffers of the parameters and optimizer state it is given (the train loop's; not a caller's that
  reuses them, as a benchmark does).

Parameters and optimizer state are float32 whatever ``model.dtype`` (training refuses bf16 parameters:
scaling.config.validate), so gradients and AdamW's moments are float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from scaling.data.tokenizer import N_BYTES

# jax.checkpoint_policies members that build a policy from arguments (names, offload targets) rather than being
# one; train.remat takes the others by name.
_POLICY_FACTORIES = ("offload_dot_with_no_batch_dims", "save_and_offload_only_these_names",
                     "save_any_names_but_these", "save_anything_except_these_names", "save_from_both_policies",
                     "save_only_these_names")


def remat_choices() -> tuple[str, ...]:
    """The accepted values of train.remat: "none", "block", and the argument-free jax.checkpoint_policies."""
    policies = sorted(n for n in dir(jax.checkpoint_policies)
                      if not n.startswith("_") and n not in _POLICY_FACTORIES
                      and callable(getattr(jax.checkpoint_policies, n)))
    return ("none", "block", *policies)


def adamw(grad_clip: float, b1: float, b2: float, weight_decay: float) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW at learning rate 1, decaying only matrices (ndim >= 2; not norm gains,
    biases or per-head scalars). The train step scales its update by the schedule's value, an argument of
    the step (:func:`make_steps`), so the compiled step depends neither on the run's length nor on its peak
    learning rate: runs of one shape at several budgets share one compiled program."""
    def decay_mask(params):  # a matrix: 2 dims, 3 when stacked over layers (model.scan_layers)
        return jax.tree_util.tree_map_with_path(
            lambda path, x: x.ndim >= 2 + jax.tree_util.keystr(path).startswith("['stack']"), params)

    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.adamw(optax.constant_schedule(1.0), b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask),
    )


def lr_floor(t) -> float:
    """The learning rate the cosine decays to: ``train.min_lr`` (absolute) if set, else ``lr * min_lr_ratio``."""
    return t.lr * t.min_lr_ratio if t.get("min_lr") is None else float(t.min_lr)


def make_optimizer(t, total: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(AdamW of :func:`adamw`, the learning-rate schedule over ``total`` steps): a linear warm-up to ``t.lr``, then
    ``t.schedule`` "cosine" (decay to :func:`lr_floor`) or "constant" (``t.lr`` to the end)."""
    warmup = min(t.warmup_steps, max(total - 1, 0))
    if t.get("schedule", "cosine") == "constant":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, t.lr, warmup), optax.constant_schedule(t.lr)], [warmup])
    else:
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=t.lr, warmup_steps=warmup, decay_steps=max(total, warmup + 1),
            end_value=lr_floor(t))
    return adamw(t.grad_clip, t.b1, t.b2, t.weight_decay), schedule


def _loss_terms(graphdef, params, batch, *, per_position: bool = False, per_row: bool = False,
                remat: str | None = None):
    """Sum of masked cross-entropy (nats), number of loss tokens, number of byte targets, number of loss tokens
    whose argmax prediction is the target. Each summed over the batch: [T] per position if ``per_position``,
    [B] per row (sequence) if ``per_row``. A batch's ``segment_ids`` and ``positions`` (packed rows) go to the
    model, so the documents packed in a row do not see each other. The logits and the loss are float32."""
    model = nnx.merge(graphdef, params)
    kw = {k: batch[k] for k in ("segment_ids", "positions", "blend") if k in batch}
    if remat not in (None, "none"):
        kw["remat"] = remat
    logits = model(batch["inputs"], **kw)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"]
    hit = (jnp.argmax(logits, axis=-1) == batch["targets"]) * mask
    axis = 0 if per_position else (1 if per_row else None)
    n_bytes = jnp.sum(mask * (batch["targets"] < N_BYTES), axis=axis)
    return jnp.sum(ce * mask, axis=axis), jnp.sum(mask, axis=axis), n_bytes, jnp.sum(hit, axis=axis)


def split_microbatches(batch: dict, k: int) -> dict:
    """[B, ...] arrays -> [k, B / k, ...]; microbatch j holds rows j, j + k, j + 2k, ...: every device's
    contiguous block of rows (the batch is sharded over "data") holds an equal share of each microbatch."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def loss_and_grads(graphdef, params, batch, *, microbatches: int = 1, remat: str | None = None):
    """(mean loss over the batch's loss tokens, its gradient), over ``microbatches`` sequential microbatches."""
    def sums(params, batch):
        total, count, _, _ = _loss_terms(graphdef, params, batch, remat=remat)
        return total, count.astype(jnp.float32)

    if microbatches == 1:
        def loss_fn(params, batch):
            total, count = sums(params, batch)
            return total / jnp.maximum(count, 1.0)

        return jax.value_and_grad(loss_fn)(params, batch)

    grad_sums = jax.value_and_grad(sums, has_aux=True)

    def body(carry, micro):
        g_acc, total_acc, count_acc = carry
        (total, count), g = grad_sums(params, micro)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        return (g_acc, total_acc + total, count_acc + count), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (g, total, count), _ = jax.lax.scan(body, init, split_microbatches(batch, microbatches))
    n = jnp.maximum(count, 1.0)
    return total / n, jax.tree.map(lambda a, p: (a / n).astype(p.dtype), g, params)


def make_steps(graphdef, tx, *, microbatches: int = 1, remat: str | None = None, donate: bool = False):
    """(train_step, eval_step), jitted. See the module docstring for ``microbatches``, ``remat`` and ``donate``."""
    def train_step(params, opt_state, batch, lr):
        """One AdamW step at learning rate ``lr`` (a float32 scalar: scaling.train.learning_rates)."""
        loss, grads = loss_and_grads(graphdef, params, batch, microbatches=microbatches, remat=remat)
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    @jax.jit
    def eval_step(params, batch):  # per row: the standard error is taken over sequences
        return _loss_terms(graphdef, params, batch, per_row=True)

    return jax.jit(train_step, donate_argnums=(0, 1) if donate else ()), eval_step
