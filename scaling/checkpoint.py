"""Checkpoints of a training run: an orbax ``CheckpointManager`` that is atomic, keeps the last K and
falls back past a corrupt checkpoint.

Layout. ``Checkpointer(directory)`` keeps one sub-directory per saved step, ``<directory>/<step>/``, with
three orbax items: ``state`` (the array pytree: parameters and optimizer state, written by tensorstore as
OCDBT/zarr), ``data_state`` (the data iterator's position, JSON) and ``meta`` (a small JSON dict, e.g.
the loss and a config hash).

What is atomic, and why. Orbax writes a step into ``<directory>/<step>.orbax-checkpoint-tmp`` (all three
items, their metadata and a ``commit_success.txt``) and only then renames that directory to
``<directory>/<step>``. A rename within one POSIX file system is atomic, so a directory named by a bare
step number is always a complete checkpoint: a crash or a kill during a save leaves at most the
``*.orbax-checkpoint-tmp`` directory, which :meth:`Checkpointer.steps` and :meth:`Checkpointer.restore`
never look at (orbax only lists names that parse as a step) and which orbax deletes before it writes that
step again (the name has no timestamp in orbax 0.12; older versions appended ``-<timestamp>``, also
ignored). On object
stores without an atomic rename (GCS) orbax marks completion with ``commit_success.txt`` instead; it
picks the mechanism from the path. Saves are synchronous: :meth:`Checkpointer.save` returns once the
renamed directory exists, so a step that ``save`` returned for survives a crash of the process right after.

One timeline. A checkpoint directory holds one training run, whose steps only grow. Saving step ``s``
therefore first deletes every checkpoint at a step ``>= s``: they belong to a timeline that was abandoned
(a restart from an older step, e.g. after falling back past a corrupt checkpoint) or are an earlier save
of the same step (which ``save`` overwrites). Besides keeping the step order honest, this works around two
orbax rules: ``CheckpointManager.save`` silently skips a step ``<=`` the newest one, and ``max_to_keep``
drops checkpoints in the order of its in-memory list (save order), which would delete fresh saves behind
a stale newer step.

Fallback. ``restore(target)`` tries the newest step. If orbax raises while reading it (missing or
garbled array files, a broken JSON item, a missing item, a shape mismatch), or the result does not match
``target``, it reports the step and the error with :func:`warnings.warn` and a log warning, then tries
the next older step, and so on. If no step can be read it raises a RuntimeError that lists each failure.
"Corrupt" means unreadable: damage is found when tensorstore cannot decode a file (zstd catches a
single flipped bit in a compressed array chunk); this wrapper adds no checksum of its own.
"""

from __future__ import annotations

import json
import logging
import numbers
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("scaling.checkpoint")

_STATE, _DATA, _META = "state", "data_state", "meta"
# An error message from tensorstore carries its whole JSON spec; the first part is the useful one.
_MAX_ERROR_CHARS = 400


class Restored(NamedTuple):
    """What :meth:`Checkpointer.restore` read.

    step: the step of the checkpoint that was read.
    state: a pytree with the structure of the restore target; leaves have its shapes and dtypes.
    data_state: the data iterator state, as it comes back from JSON (tuples become lists, dict keys
        become strings).
    meta: the meta dict given to ``save`` (an empty dict if none was given), also through JSON.
    """

    step: int
    state: Any
    data_state: dict
    meta: dict


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + " ..."


def _check_step(step, name: str = "step") -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"{name} = {step!r}: must be a non-negative integer")
    return int(step)


def _json_dict(value, name: str) -> dict:
    """``value`` as it will read back from JSON; 0-d numpy/jax scalars become Python numbers."""

    def scalar(x):
        if isinstance(x, (np.generic, np.ndarray, jax.Array)) and np.ndim(x) == 0:
            return np.asarray(x).item()
        raise TypeError(f"{type(x).__name__} {x!r} is not JSON-serialisable")

    if not isinstance(value, Mapping):
        raise ValueError(f"{name} = {value!r}: must be a dict (JSON object)")
    try:
        return json.loads(json.dumps(dict(value), default=scalar))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name}: must hold only JSON values (str, int, float, bool, None, lists, dicts with str keys) "
            f"or 0-d numeric arrays: {err}"
        ) from err


def _orbax_leaves(tree, name: str):
    """``tree`` with numpy scalars as 0-d arrays; any leaf orbax cannot store or restore is a ValueError."""

    def leaf(path, x):
        if isinstance(x, np.generic):
            return np.asarray(x)
        if isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) or (
            isinstance(x, (int, float)) and not isinstance(x, bool)
        ):
            return x
        raise ValueError(
            f"{name}{jax.tree_util.keystr(path)} is a {type(x).__name__}: leaves must be jax or numpy "
            "arrays, numpy scalars, Python int/float, or (in a restore target) jax.ShapeDtypeStruct"
        )

    out = jax.tree_util.tree_map_with_path(leaf, tree)
    if not jax.tree.leaves(out):
        raise ValueError(f"{name} has no array leaves: nothing to checkpoint")
    return out


def _check_like(restored, target) -> None:
    """Raise if ``restored`` does not have the structure, shapes and dtypes of ``target``."""
    if jax.tree.structure(restored) != jax.tree.structure(target):
        raise ValueError(
            f"restored structure {jax.tree.structure(restored)} != target {jax.tree.structure(target)}"
        )
    for (path, r), t in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree.leaves(target),
                            strict=True):
        if hasattr(t, "shape") and (np.shape(r) != tuple(t.shape) or np.dtype(r.dtype) != np.dtype(t.dtype)):
            raise ValueError(
                f"restored leaf {jax.tree_util.keystr(path)} is {np.dtype(r.dtype)}{list(np.shape(r))}, "
                f"target is {np.dtype(t.dtype)}{list(t.shape)}"
            )


def flat_tree(tree) -> dict:
    """A pytree as {path string: leaf}: string keys that every checkpoint format takes (the train state is saved
    in this form, so a checkpoint does not depend on the pytree classes of the model or the optimizer)."""
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflat_tree(flat: dict, like):
    """The pytree of ``like``'s structure whose leaves are ``flat``'s (the inverse of :func:`flat_tree`)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree.unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


class Checkpointer:
    """Saves and restores (state pytree, data iterator state, meta dict) per training step.

    Args:
        directory: where the step directories live; created if missing.
        keep: how many of the newest checkpoints to keep (>= 1); older ones are deleted after each save.

    Use as a context manager, or call :meth:`close` when done.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3):
        if isinstance(keep, bool) or not isinstance(keep, numbers.Integral) or keep < 1:
            raise ValueError(f"keep = {keep!r}: must be an integer >= 1")
        self.directory = Path(directory).expanduser().resolve()
        self.keep = int(keep)
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            # Synchronous: save() returns with the step renamed into place, and nothing runs behind the
            # training loop's back. Checkpoints here are small; the write time is not worth hiding.
            enable_async_checkpointing=False,
            create=True,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=(_STATE, _DATA, _META))
        self._closed = False

    # ------------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"Checkpointer({str(self.directory)!r}) is closed")

    def steps(self) -> list[int]:
        """All complete checkpoints on disk, ascending. Temporary (unfinished) directories are not listed."""
        self._check_open()
        # Read the directory, not orbax's cache, so a listing reflects what is on disk right now.
        self._mgr.reload()
        return sorted(int(s) for s in self._mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None if there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state, *, data_state: dict, meta: dict | None = None) -> None:
        """Write checkpoint ``step``; returns once it is complete on disk.

        Args:
            step: the training step (non-negative int). Existing checkpoints at steps ``>= step`` are
                deleted first (same step: overwrite; newer steps: an abandoned timeline).
            state: a pytree (dicts, lists, nnx.State, ...) whose leaves are jax/numpy arrays, numpy scalars
                or Python int/float. Dtypes are stored as they are (bf16 included).
            data_state: the data iterator's state, a JSON-serialisable dict.
            meta: a small JSON-serialisable dict (metrics, config hash); 0-d numeric arrays are turned
                into Python numbers.
        """
        self._check_open()
        step = _check_step(step)
        data_state = _json_dict(data_state, "data_state")
        meta = _json_dict({} if meta is None else meta, "meta")
        state = _orbax_leaves(state, "state")

        stale = [s for s in self.steps() if s >= step]
        if stale:
            log.warning("checkpoint %s: deleting checkpoints at steps %s before saving step %d "
                        "(same step: overwrite; newer steps: abandoned timeline)",
                        self.directory, stale, step)
            for s in stale:
                self._mgr.delete(s)

        saved = self._mgr.save(
            step,
            args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardSave(state),
                _DATA: ocp.args.JsonSave(data_state),
                _META: ocp.args.JsonSave(meta),
            }),
            force=True,  # the decision to save is the caller's, not orbax's save-interval policy
        )
        self._mgr.wait_until_finished()
        if not saved:
            raise RuntimeError(f"orbax declined to save step {step} in {self.directory}")

    def _restore_step(self, step: int, target) -> Restored:
        out = self._mgr.restore(
            step,
            args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardRestore(target),
                _DATA: ocp.args.JsonRestore(),
                _META: ocp.args.JsonRestore(),
            }),
        )
        state, data_state, meta = out[_STATE], out[_DATA], out[_META]
        for name, value in ((_DATA, data_state), (_META, meta)):
            if not isinstance(value, dict):
                raise ValueError(f"item {name!r} read back as {type(value).__name__}, expected a dict")
        _check_like(state, target)
        return Restored(step, state, data_state, meta)

    def restore(self, target, *, step: int | None = None) -> Restored:
        """Read a checkpoint into the structure, shapes and dtypes of ``target``.

        Args:
            target: a pytree like the saved state; leaves are arrays or ``jax.ShapeDtypeStruct``. Concrete
                jax arrays give their sharding to the restored arrays; numpy leaves restore as numpy.
            step: the step to read. None: the newest readable one; an unreadable checkpoint is reported
                (``warnings.warn`` + log) and the next older one is tried.

        Returns:
            Restored(step, state, data_state, meta).

        Raises:
            ValueError: ``step`` is not one of :meth:`steps`, or ``target`` has a leaf of another kind.
            RuntimeError: the requested step, or (step=None) every step, could not be read; the message
                names each step and its error.
        """
        self._check_open()
        target = _orbax_leaves(target, "target")
        steps = self.steps()
        if step is not None:
            step = _check_step(step)
            if step not in steps:
                raise ValueError(f"step = {step}: no complete checkpoint in {self.directory}; have {steps}")
            try:
                return self._restore_step(step, target)
            except Exception as err:
                raise RuntimeError(
                    f"checkpoint step {step} in {self.directory} could not be restored: {_short(err)}"
                ) from err

        if not steps:
            raise RuntimeError(f"no complete checkpoint in {self.directory} to restore")
        failures = []
        for s in reversed(steps):
            try:
                restored = self._restore_step(s, target)
            except Exception as err:  # any orbax/tensorstore/JSON error means this step is unusable
                failures.append(f"step {s}: {_short(err)}")
                msg = (f"checkpoint step {s} in {self.directory} could not be restored "
                       f"({_short(err)}); trying an older one")
                log.warning(msg, exc_info=True)
                warnings.warn(msg, stacklevel=2)
                continue
            if failures:
                log.warning("restored checkpoint step %d of %s after %d unreadable newer one(s)",
                            s, self.directory, len(failures))
            return restored
        raise RuntimeError(
            f"no checkpoint in {self.directory} could be restored:\n  " + "\n  ".join(failures)
        )

    def close(self) -> None:
        """Release orbax's resources. Idempotent; the Checkpointer cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            self._mgr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, keep={self.keep})"
