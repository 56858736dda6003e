"""The training loop: ``train(cfg, workdir)``.

A run's workdir holds ``config.json`` (the resolved config and its run id), ``status.json``
(running / done / diverged / failed), ``metrics.jsonl`` (one JSON row per logged step or evaluation),
TensorBoard event files under ``tb/`` and ``checkpoints/`` (orbax, atomic, the last K kept): scaling.rundir
reads and writes them and defines the run id.

Starting ``train`` again on the same workdir resumes from the newest readable checkpoint: parameters,
optimizer state and the data iterator's position, so the resumed run is bit-for-bit the run that was not
interrupted (on one CPU). Metrics rows past the checkpoint are dropped and rewritten.

A NaN or inf loss stops the run with status "diverged" (the loss is read at every log, eval and checkpoint step,
so steps between them dispatch without a host sync); the last good checkpoint stays.
For a synthetic task (``data.source`` in scaling.data.config.TASKS) every eval row of metrics.jsonl also
carries ``task_accuracy`` (exact match on answer tokens, held-out ``data.task.eval_seed`` stream). With
``train.eval_contexts`` set, a finished run writes ``eval_contexts.json``: the loss and accuracy per position
at each of those contexts (see :func:`evaluate_contexts`).
The devices form the mesh of ``train.mesh`` (scaling/sharding.py: data, fsdp and tensor axes; default data
parallel over every device): parameters and optimizer state are laid out by logical-axis rules (FSDP over
``fsdp``, heads and the MLP's width over ``tensor``), the batch over ``data`` and ``fsdp``. With several
processes (``jax.distributed``) ``train.batch_size`` is the global batch: each process reads its rows
``[p*B/P, (p+1)*B/P)`` (scaling.data.make_train_iterator) and the global arrays are built from them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from scaling import accounting, rundir, sharding
from scaling import config as _config
from scaling.checkpoint import Checkpointer, flat_tree, unflat_tree
from scaling.data import make_eval_batches, make_train_iterator
from scaling.data.config import TASKS, validate_data_config
from scaling.data.pipeline import eval_rows
from scaling.data.tokens import bpb_basis
from scaling.models import build
from scaling.rundir import MetricsLog, run_id
from scaling.steps import _loss_terms, adamw, make_optimizer, make_steps  # noqa: F401 (re-exported)

log = logging.getLogger("scaling.train")

LN2 = math.log(2.0)


@dataclasses.dataclass
class TrainResult:
    status: str  # "done" | "diverged"
    step: int
    workdir: str
    run_id: str
    summary: dict


def learning_rates(schedule, total: int) -> np.ndarray:
    """The schedule's value at steps 0 .. total - 1 (float32), the ``lr`` argument of each train step."""
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(max(total, 1))), dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _cached_steps(graphdef, grad_clip, b1, b2, weight_decay, microbatches=1, remat=None):
    """make_steps for a model structure, the optimizer's constants and the step's layout (microbatches, remat):
    runs of one shape trained one after another in a process (a sweep worker serving several runs) reuse the
    traced and compiled steps. The step does not depend on the run's length or peak learning rate (both are in
    the ``lr`` argument). It takes over (donates) the train state it is given."""
    return make_steps(graphdef, adamw(grad_clip, b1, b2, weight_decay), microbatches=microbatches, remat=remat,
                      donate=True)


def init_train_state(cfg):
    """(graphdef, {"params", "opt"}, optimizer, schedule) of a fresh run of ``cfg``."""
    model = build(cfg.model, seed=cfg.train.seed)
    graphdef, params = nnx.split(model, nnx.Param)
    tx, schedule = make_optimizer(cfg.train, _config.total_steps(cfg.train))
    return graphdef, {"params": params, "opt": tx.init(params)}, tx, schedule


def load_run(workdir, *, step: int | None = None):
    """(cfg, model, step) of a run's workdir, with the parameters of its newest readable checkpoint."""
    workdir = Path(workdir)
    cfg = _config.from_dict(rundir.read_config(workdir)["config"])
    graphdef, train_state, _, _ = init_train_state(cfg)
    with Checkpointer(workdir / rundir.CHECKPOINTS) as ckpt:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"{str(workdir)!r} has no checkpoint yet")
        restored = ckpt.restore(flat_tree(train_state), step=step)
    train_state = unflat_tree(restored.state, train_state)
    return cfg, nnx.merge(graphdef, train_state["params"]), restored.step


def init_params_from(cfg, workdir):
    """(params, source dir, source step): the newest parameters of the run ``cfg.train.init_from``, converted
    to ``cfg``'s model (attention layers become retention where the patterns differ: scaling.convert)."""
    from scaling.convert import convert_params, resolve_init_from

    src = resolve_init_from(cfg.train.init_from, workdir)
    if not src.is_dir():
        raise FileNotFoundError(f"train.init_from = {cfg.train.init_from!r}: no run directory {str(src)!r}")
    src_cfg, src_model, step = load_run(src)
    return convert_params(src_cfg, nnx.state(src_model, nnx.Param), cfg), src, step


EVAL_BATCH_TOKENS = 8192  # evaluation batches hold at least this many tokens (forward only: no activations kept)


def eval_batch_size(batch_size: int, context: int, rows: int | None = None) -> int:
    """Rows per evaluation batch: a multiple of the training batch (so it shards the same way) holding at least
    EVAL_BATCH_TOKENS tokens, but no more batches' worth than the ``rows`` of the evaluation set need (no batch
    of padding). The evaluation rows themselves do not depend on it."""
    k = max(1, -(-EVAL_BATCH_TOKENS // (int(batch_size) * int(context))))
    if rows is not None:
        k = min(k, max(1, -(-int(rows) // int(batch_size))))
    return int(batch_size) * k


def eval_set(cfg, context: int) -> list[dict]:
    """The fixed evaluation set of ``cfg.data`` at ``context`` (scaling.data.make_eval_batches), in batches of
    :func:`eval_batch_size` rows. Kept for the next run of the process with the same data (a serving worker)."""
    rows = eval_rows(cfg.data, context)
    batch_size = eval_batch_size(cfg.train.batch_size, context, rows)
    key = (json.dumps(cfg.data.to_dict(), sort_keys=True, default=str), context, batch_size)
    if key not in _EVAL_SETS:
        batches = make_eval_batches(cfg.data, context=context, batch_size=batch_size)
        for batch in batches:  # shared between runs: read-only
            for v in batch.values():
                v.setflags(write=False)
        while len(_EVAL_SETS) >= 4:
            _EVAL_SETS.pop(next(iter(_EVAL_SETS)))
        _EVAL_SETS[key] = batches
    return _EVAL_SETS[key]


_EVAL_SETS: dict[tuple, list[dict]] = {}


def _host(x) -> np.ndarray:
    """A (global) jax array, or a tuple of them stacked, as float64 numpy on every process."""
    if isinstance(x, tuple):
        return np.stack([_host(v) for v in x]) if x else np.zeros(0)
    if not getattr(x, "is_fully_addressable", True):  # rows on other processes' devices: gathered
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x, np.float64)


def evaluate(eval_step, params, batches, shard, *, task: bool = False, bpb="bytes") -> dict:
    """Loss on the fixed evaluation set: ``val_loss`` (nats per loss token), its standard error ``val_loss_se``
    over the set's sequences, ``val_bpb``, ``val_tokens`` (loss tokens) and, for a synthetic task (``task``),
    ``task_accuracy``: the exact-match accuracy of the argmax prediction on answer tokens.

    ``val_bpb`` (bits per UTF-8 byte, comparable across tokenizers) follows ``bpb``
    (scaling.data.tokens.bpb_basis): ``"bytes"``: the loss summed over the set over its byte targets (ids below 256,
    the byte tokenizer); an array (the bytes of each id, a byte-level tokenizer's file): the loss summed over the
    set over the bytes of its loss targets; a float r (tokens per byte of the token file, from its metadata):
    ``val_loss * r / ln 2``; None: unknown (a token file without byte counts), ``val_bpb`` is None.

    ``val_loss`` = sum_i l_i / sum_i n_i over sequences i with loss sum l_i over n_i tokens (a ratio estimator);
    its standard error is sqrt(sum_i (l_i - val_loss n_i)^2 / (m (m - 1))) / mean(n_i) over the m sequences
    with at least one loss token.
    """
    parts = [_host(x) for x in zip(*(eval_step(params, shard(b)) for b in batches), strict=True)]
    rows = [np.concatenate(p) for p in parts] if parts else [np.zeros(0)] * 4
    loss_sum, count, n_bytes, hits = rows
    total, n = float(loss_sum.sum()), float(count.sum())
    mean = total / max(n, 1.0)
    real = count > 0
    m = int(real.sum())
    if m > 1:
        dev = loss_sum[real] - mean * count[real]
        se = float(np.sqrt((dev**2).sum() / (m * (m - 1))) / count[real].mean())
    else:
        se = float("nan")
    if isinstance(bpb, np.ndarray):  # exact: the bytes of every loss target (counted here, on the host batches)
        counted = sum(float((bpb[np.asarray(b["targets"])] * np.asarray(b["loss_mask"])).sum()) for b in batches)
        val_bpb = total / max(counted, 1.0) / LN2
    elif bpb == "bytes":
        val_bpb = total / max(float(n_bytes.sum()), 1.0) / LN2
    else:
        val_bpb = None if bpb is None else mean * float(bpb) / LN2
    out = {"val_loss": mean, "val_loss_se": se, "val_bpb": val_bpb, "val_tokens": int(n)}
    if task:
        out["task_accuracy"] = float(hits.sum()) / max(n, 1.0)
    return out


def evaluate_contexts(cfg, graphdef, params, shard) -> list[dict]:
    """Evaluation at each of ``train.eval_contexts`` (length generalisation), on the fixed evaluation set of each
    context (``data.eval_tokens`` tokens).

    One row per context: ``context``, ``val_loss`` (nats per loss token), ``task_accuracy`` (synthetic tasks),
    and per position t of the row: ``loss_by_position`` (mean loss, None where no loss token),
    ``accuracy_by_position`` (argmax exact match, None likewise) and ``tokens_by_position`` (loss tokens).
    """
    step = jax.jit(lambda p, b: _loss_terms(graphdef, p, b, per_position=True))
    task = cfg.data.source in TASKS
    rows = []
    for context in cfg.train.eval_contexts:
        sums = None
        for batch in eval_set(cfg, context):
            terms = [_host(x) for x in step(params, shard(batch))]
            sums = terms if sums is None else [a + b for a, b in zip(sums, terms, strict=True)]
        total, count, _, hits = sums
        def per(x, count=count):
            return [float(v) if n else None for v, n in zip(x / np.maximum(count, 1.0), count, strict=True)]

        row = {"context": int(context), "val_loss": float(total.sum() / max(count.sum(), 1.0))}
        if task:
            row["task_accuracy"] = float(hits.sum() / max(count.sum(), 1.0))
        row |= {"loss_by_position": per(total), "accuracy_by_position": per(hits),
                "tokens_by_position": [int(n) for n in count]}
        rows.append(row)
    return rows


def train(cfg, workdir, *, progress: bool = True) -> TrainResult:
    """Train ``cfg`` (a validated run config) in ``workdir``; resume if it holds a checkpoint.

    Returns a TrainResult with status "done" or "diverged".
    """
    run = Run(cfg, workdir, progress=progress)
    try:
        while not run.ended:
            run.step_alone()
    finally:
        run.close()
    return run.finish()


class Run:
    """One run's training, step by step: :func:`train` drives one, scaling.train_pack drives several in one
    program. Building it validates the config, writes config.json and the running status, and restores the
    newest checkpoint; :meth:`advance` takes a step's result (logs, evaluates, checkpoints and checks the
    loss where due); :meth:`close` then :meth:`finish` end it (the final status, the context evaluation)."""

    def __init__(self, cfg, workdir, *, progress: bool = True):
        _config.validate(cfg)
        t = cfg.train
        self.cfg, self.t = cfg, t
        self.blend_steps, self.total = t.get("blend_steps"), _config.total_steps(t)
        if self.blend_steps and self.blend_steps > self.total:  # before anything is written
            raise _config.ConfigError(f"train.blend_steps = {self.blend_steps}: must be at most the run's "
                                      f"{self.total} steps (the model must end as power retention alone)")
        sharding.initialize_hosts()  # a multi-host job from the environment (no-op when one process, or joined)
        self.primary = primary = sharding.is_primary()  # process 0 writes the run directory
        self.workdir = workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.rid = rid = run_id(cfg)
        if primary:
            held = rundir.write_config(workdir, rid, _config.to_dict(cfg))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("statescale config.json")
            held = rundir.read_config(workdir)["run_id"]
        if held != rid:
            raise _config.ConfigError(
                f"workdir {str(workdir)!r} holds run {held} with a different config; "
                "use a new --workdir (or delete it) to start a different run")
        self._check_layout()

        # Packed rows hold several documents: their segment ids and positions go to the model, which keeps the
        # documents apart. An unpacked row is one document (padding after it), which sees nothing else anyway:
        # the model gets the tokens alone, so the train step stays the plain (and Pallas-capable) program.
        data = validate_data_config(cfg.data)
        self.drop = () if data["packing"] else ("segment_ids", "positions")

        self.graphdef, train_state, tx, schedule = init_train_state(cfg)
        layout = sharding.state_shardings(train_state, self.mesh)
        self.train_state = jax.device_put(train_state, layout)
        self.data_iter = make_train_iterator(cfg.data, batch_size=t.batch_size, context=t.context, seed=t.seed)
        self.eval_batches = eval_set(cfg, t.context)
        self.ckpt = Checkpointer(workdir / rundir.CHECKPOINTS, keep=t.keep_checkpoints)
        self.step = 0
        if self.ckpt.latest_step() is not None:
            restored = self.ckpt.restore(flat_tree(self.train_state))
            self.train_state = jax.device_put(unflat_tree(restored.state, self.train_state), layout)
            self.data_iter.set_state(restored.data_state)
            self.step = restored.step
            log.info("resumed %s from step %d", workdir, self.step)
        elif t.get("init_from"):
            params, src, src_step = init_params_from(cfg, workdir)
            self.train_state = jax.device_put({"params": params, "opt": tx.init(params)}, layout)
            log.info("initialised %s from %s (step %d)", workdir, src, src_step)

        counts = accounting.params(cfg)
        self.tokens_per_step = t.batch_size * t.context
        self.flops_per_token = accounting.train_flops_per_token(cfg, t.context)  # 3 x forward, mixer-aware
        self.blend_flops = accounting.blend_flops_per_token(cfg, t.context) if self.blend_steps else 0.0
        self.summary = {
            "run_id": rid, "params": counts["total"], "non_embedding_params": counts["non_embedding"],
            "state_size": accounting.state_size(cfg, t.context), "context": t.context,
            "total_steps": self.total, "tokens": self.total * self.tokens_per_step, "flops": self.flops_at(self.total),
        }
        if primary:
            rundir.write_status(workdir, "running", step=self.step, **self.summary)
        self.metrics = MetricsLog(workdir, self.step) if primary else rundir.NoMetrics()
        self.train_step, self.eval_step = _cached_steps(self.graphdef, t.grad_clip, t.b1, t.b2, t.weight_decay,
                                                        self.microbatches, t.get("remat"))
        self.lrs = learning_rates(schedule, self.total)
        self.task = cfg.data.source in TASKS  # a synthetic task: evaluations add task_accuracy
        self.bpb = bpb_basis(data)  # bits per byte: counted bytes, the file's ratio, or unknown
        if self.step == 0 and t.get("init_from"):  # the loss right after initialisation from another run
            self.metrics.write({"kind": "eval", "step": 0, **self.evaluate(0)})
        self.status, self.last = "done", {}
        self.bar = _Progress(self.total, self.step, enabled=progress and primary, title=cfg.model.name)
        self.t_last, self.tok_since = time.perf_counter(), 0
        self.good = self.step  # the last step whose loss was checked finite
        self.ended = self.step >= self.total

    def _check_layout(self):
        """The mesh and the batch's splits (processes, mesh shards, microbatches), before any compute."""
        t = self.t
        n_proc = jax.process_count()
        if t.batch_size % n_proc:
            raise _config.ConfigError(f"train.batch_size = {t.batch_size}: must be a multiple of the "
                                      f"{n_proc} processes that each read an equal slice of it")
        try:
            self.mesh = mesh = sharding.make_mesh(t.get("mesh"))
        except sharding.MeshError as e:
            raise _config.ConfigError(str(e)) from None
        split = sharding.batch_divisor(mesh)
        if t.batch_size % split:
            raise _config.ConfigError(f"train.batch_size = {t.batch_size}: must be a multiple of the {split} ways "
                                      f"the batch is split (mesh axes data x fsdp of {dict(mesh.shape)})")
        self.microbatches = microbatches = t.get("microbatches") or 1
        if t.batch_size % (microbatches * split):
            raise _config.ConfigError(f"train.microbatches = {microbatches}: train.batch_size = {t.batch_size} must "
                                      f"be a multiple of microbatches x {split} batch shards = {microbatches * split}")
        self.data_sharding = NamedSharding(mesh, sharding.batch_spec())

    def flops_at(self, s: int) -> float:
        """Training FLOPs after s steps, the blended steps' attention included."""
        tokens = s * self.tokens_per_step
        return tokens * self.flops_per_token + min(s, self.blend_steps or 0) * self.tokens_per_step * self.blend_flops

    def shard(self, batch):
        """This process's rows of the global batch -> global arrays (one process: device_put)."""
        return {k: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(v))
                for k, v in batch.items() if k not in self.drop}

    def blended(self, batch, s: int):
        """PowerCoder-style: the blend weight of step s, one per row."""
        if not self.blend_steps:
            return batch
        return {**batch, "blend": np.full((len(batch["inputs"]),), min(1.0, s / self.blend_steps), np.float32)}

    def state(self):
        """(parameters, optimizer state): the train step's first two arguments (donated to it)."""
        return self.train_state["params"], self.train_state["opt"]

    def next_batch(self):
        """The global batch of the next step."""
        return self.shard(self.blended(next(self.data_iter), self.step))

    def lr(self):
        """The learning rate of the next step."""
        return self.lrs[self.step]

    def evaluate(self, s: int) -> dict:
        return evaluate(self.eval_step, self.train_state["params"], [self.blended(b, s) for b in self.eval_batches],
                        self.shard, task=self.task, bpb=self.bpb)

    def step_alone(self) -> None:
        """The next step with this run's own compiled train step."""
        self.advance(*self.train_step(*self.state(), self.next_batch(), self.lr()))

    def advance(self, params, opt_state, out) -> None:
        """Take the result of the next step: log, evaluate and checkpoint where due, check the loss there (no host
        sync between those steps: the next batch is read while this step computes). Sets ``ended``."""
        t = self.t
        self.step = step = self.step + 1
        self.tok_since += self.tokens_per_step
        self.ended = step >= self.total
        if not (step % t.log_every == 0 or step % t.eval_every == 0 or step % t.checkpoint_every == 0
                or self.ended):
            self.train_state = {"params": params, "opt": opt_state}
            return
        loss = float(out["loss"])
        if not math.isfinite(loss):
            self.status, self.ended = "diverged", True
            self.metrics.write({"kind": "train", "step": step, "loss": loss})
            log.error("loss is %s at step %d: run diverged; the last good checkpoint is kept", loss, step)
            self.step = self.good
            return
        self.train_state = {"params": params, "opt": opt_state}
        self.good = step
        if step % t.log_every == 0 or self.ended:
            now = time.perf_counter()
            self.last = {"kind": "train", "step": step, "tokens": step * self.tokens_per_step,
                         "flops": self.flops_at(step), "loss": loss,
                         "lr": float(self.lrs[step - 1]), "grad_norm": float(out["grad_norm"]),
                         "tokens_per_s": self.tok_since / max(now - self.t_last, 1e-9)}
            self.metrics.write(self.last)
            self.t_last, self.tok_since = now, 0
        if step % t.eval_every == 0 or self.ended:
            ev = self.evaluate(step)
            self.metrics.write({"kind": "eval", "step": step, **ev})
            self.last.update(ev)
        if step % t.checkpoint_every == 0 or self.ended:
            self.ckpt.save(step, flat_tree(self.train_state), data_state=self.data_iter.get_state(),
                           meta={"loss": loss})
        self.bar.update(step, loss, self.last.get("tokens_per_s"), self.last.get("val_loss"))

    def close(self) -> None:
        """Stop the progress bar, close the metrics log and the checkpointer (idempotent)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.bar.close()
        self.metrics.close()
        self.ckpt.close()

    def finish(self) -> TrainResult:
        """The run's summary and final status (after :meth:`close`); a finished run with ``train.eval_contexts``
        also evaluates at each of them."""
        last, summary = self.last, self.summary
        summary.update(step=self.step, final_loss=last.get("loss"), val_loss=last.get("val_loss"),
                       val_loss_se=last.get("val_loss_se"), val_bpb=last.get("val_bpb"))
        if self.task:
            summary["task_accuracy"] = last.get("task_accuracy")
        if self.status == "done" and self.t.eval_contexts:  # every process: collective
            contexts = evaluate_contexts(self.cfg, self.graphdef, self.train_state["params"], self.shard)
            if self.primary:
                rundir.write_json(self.workdir / rundir.EVAL_CONTEXTS,
                                  {"train_context": self.t.context, "step": self.step, "contexts": contexts})
        if self.primary:
            rundir.write_status(self.workdir, self.status, **summary)
        return TrainResult(status=self.status, step=self.step, workdir=str(self.workdir), run_id=self.rid,
                           summary=summary)


class _Progress:
    """A rich progress bar with step, loss, tokens/s and ETA (silent when disabled)."""

    def __init__(self, total: int, start: int, *, enabled: bool, title: str):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn())
        self.progress.start()
        self.task = self.progress.add_task(title, total=total, completed=start, loss="-", val="-", tps="-")

    def update(self, step, loss, tps, val):
        if self.enabled:
            self.progress.update(self.task, completed=step, loss=f"{loss:.3f}",
                                 val="-" if val is None else f"{val:.3f}",
                                 tps="-" if tps is None else f"{tps:,.0f}")

    def close(self):
        if self.enabled:
            self.progress.stop()
