"""Multi-host data: process p of P reads rows [p*B/P, (p+1)*B/P) of every global batch.

In-process tests pass ``process_index`` / ``process_count`` explicitly; the slow test runs two real processes
joined by ``jax.distributed`` on CPU (gloo) and compares their data and a training / evaluation loss on the
global arrays with one process.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.data import pipeline, synthetic
from tests.data.test_pipeline import _text_dir
from tests.helpers import devices_env

ROOT = Path(__file__).resolve().parents[2]
PRESET = str(ROOT / "configs/models/power_retention_tiny.py")
MODEL = ["model.d_model=32", "model.n_layers=1", "model.retention.n_heads=2", "model.retention.n_kv_heads=2",
         "model.retention.chunk_size=16", "data.eval_tokens=512"]
B, T, STEPS = 8, 32, 3
LENGTHS = [3, 40, 7, 15, 1, 60, 22, 9, 14, 33, 5, 28, 70, 2, 45, 31]
MQAR = {"source": "mqar", "task": {"num_kv_pairs": 4}, "eval_tokens": 1024}


def _sources(text_cfg):
    return {"unpacked": {**text_cfg, "packing": False}, "packed": {**text_cfg, "packing": True}, "mqar": MQAR}


def local_batches(text_cfg, steps=STEPS, batch_size=B, **layout):
    """{"<source>__<key>": [steps, B/P, T]} of this process's training batches (layout: jax's by default)."""
    out = {}
    for name, cfg in _sources(text_cfg).items():
        it = pipeline.make_train_iterator(cfg, batch_size=batch_size, context=T, seed=5, **layout)
        batches = [next(it) for _ in range(steps)]
        out |= {f"{name}__{k}": np.stack([b[k] for b in batches]) for k in pipeline.BATCH_KEYS}
    return out


def global_values(text_cfg, batches, **layout):
    """One training step's loss and gradient norm on the global batch, a jitted global reduction, the gathered
    global inputs and the evaluation loss, from this process's rows (``batches``: :func:`local_batches`)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from scaling import config
    from scaling.train import _host, evaluate, init_train_state, make_steps

    data = {**text_cfg, "packing": True}
    cfg = config.load(PRESET, MODEL + [(f"data.{k}", v) for k, v in data.items()] + [("train.batch_size", B),
                                                                                     ("train.context", T)])
    graphdef, state, tx, _ = init_train_state(cfg)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    state = jax.tree.map(lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), state)

    def shard(batch):
        return {k: jax.make_array_from_process_local_data(rows, np.asarray(v)) for k, v in batch.items()}

    train_step, eval_step = make_steps(graphdef, tx)
    batch = shard({k: batches[f"packed__{k}"][0] for k in pipeline.BATCH_KEYS})
    masked = jax.jit(lambda b: jnp.sum(b["inputs"] * b["loss_mask"]))(batch)
    _, _, out = train_step(state["params"], state["opt"], batch, jnp.float32(1e-3))
    evals = pipeline.make_eval_batches(data, batch_size=B, context=T, **layout)
    ev = evaluate(eval_step, state["params"], evals, shard)
    return {"masked_sum": np.float64(masked), "loss": np.float64(out["loss"]),
            "grad_norm": np.float64(out["grad_norm"]), "inputs": _host(batch["inputs"]),
            "val_loss": np.float64(ev["val_loss"]), "val_tokens": np.float64(ev["val_tokens"])}


WINDOW = 32  # packed rows shuffled in windows of 32 rows, not 1024: the slicing does not depend on it


@pytest.fixture
def text_cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "ROW_SHUFFLE_WINDOW", WINDOW)
    return _text_dir(tmp_path / "corpus", LENGTHS, n_val=4)


def _concat(parts, axis):
    return {k: np.concatenate([p[k] for p in parts], axis=axis) for k in parts[0]}


# ----------------------------------------------------------------------------------------------------------
# In process: explicit layouts


@pytest.mark.parametrize("n_proc", [2, 4])
def test_processes_concatenate_to_the_global_batch(text_cfg, n_proc):
    whole = local_batches(text_cfg, process_index=0, process_count=1)
    parts = [local_batches(text_cfg, process_index=p, process_count=n_proc) for p in range(n_proc)]
    for k, v in parts[0].items():
        assert v.shape == (STEPS, B // n_proc, T), k
    got = _concat(parts, axis=1)
    for k in whole:
        np.testing.assert_array_equal(got[k], whole[k], err_msg=k)


def test_random_access_streams_read_only_their_rows(text_cfg, monkeypatch):
    windows, examples = [], []
    row, item = pipeline._unpacked_row, synthetic.TaskSource.__getitem__
    monkeypatch.setattr(pipeline, "_unpacked_row", lambda *a: windows.append(a[1]) or row(*a))
    monkeypatch.setattr(synthetic.TaskSource, "__getitem__", lambda self, i: examples.append(i) or item(self, i))
    it = pipeline.make_train_iterator({**text_cfg, "packing": False}, batch_size=B, context=T, seed=0,
                                      process_index=1, process_count=4)
    [next(it) for _ in range(3)]
    assert len(windows) == 3 * B // 4
    it = pipeline.make_train_iterator(MQAR, batch_size=B, context=T, seed=0, process_index=1, process_count=4)
    [next(it) for _ in range(3)]
    assert examples == [b * B + 2 + j for b in range(3) for j in range(2)]  # rows 2, 3 of each global batch


@pytest.mark.parametrize("source", ["unpacked", "packed", "mqar"])
def test_process_state_resumes_on_its_own_and_on_other_layouts(text_cfg, source):
    cfg = _sources(text_cfg)[source]
    make = lambda p, n: pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=2,  # noqa: E731
                                                     process_index=p, process_count=n)
    whole = make(0, 1)
    reference = [next(whole) for _ in range(5)]  # the global batches
    it = make(1, 2)
    [next(it) for _ in range(2)]
    state = json.loads(json.dumps(it.get_state()))
    assert state["pipeline"]["process_index"] == 1 and state["pipeline"]["process_count"] == 2
    for p, n in ((1, 2), (0, 1), (3, 4)):  # the same layout, one process, more processes
        fresh = make(p, n)
        fresh.set_state(state)
        rows = slice(p * B // n, (p + 1) * B // n)
        for got, want in zip([next(fresh) for _ in range(3)], reference[2:], strict=True):
            for k in want:
                np.testing.assert_array_equal(got[k], want[k][rows], err_msg=f"{k} on process {p} of {n}")
    other = pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=3, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="saved for a pipeline with seed = 2, this one has seed = 3"):
        other.set_state(state)


def test_a_state_saved_before_the_layout_was_recorded_resumes_one_process(text_cfg):
    cfg = {**text_cfg, "packing": False}
    it = pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=0, process_index=0, process_count=1)
    next(it)
    state = it.get_state()
    want = next(it)
    state["pipeline"] = {k: v for k, v in state["pipeline"].items() if k not in ("process_index", "process_count")}
    fresh = pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=0, process_index=0, process_count=1)
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["inputs"], want["inputs"])


def test_batch_not_divisible_by_the_processes_is_one_line(text_cfg):
    with pytest.raises(ValueError, match=r"^train\.batch_size = 6: must be a multiple of the process count 4 "):
        pipeline.make_train_iterator(text_cfg, batch_size=6, context=T, seed=0, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index = 2: must be an integer in"):
        pipeline.make_train_iterator(text_cfg, batch_size=4, context=T, seed=0, process_index=2, process_count=2)


@pytest.mark.parametrize("source", ["unpacked", "packed", "mqar"])
def test_eval_batches_are_sliced_per_process(text_cfg, source):
    cfg = _sources(text_cfg)[source]
    whole = pipeline.make_eval_batches(cfg, batch_size=B, context=T, process_index=0, process_count=1)
    parts = [pipeline.make_eval_batches(cfg, batch_size=B, context=T, process_index=p, process_count=2)
             for p in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for i, want in enumerate(whole):
        got = _concat([parts[0][i], parts[1][i]], axis=0)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# ----------------------------------------------------------------------------------------------------------
# Two real processes (jax.distributed on CPU)


WORKER = """
import json, sys
import numpy as np
import jax

pid, port, spec, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=60)
assert jax.process_count() == 2 and jax.process_index() == pid and jax.device_count() == 4
from scaling.data import pipeline
from tests.data.test_multihost import WINDOW, global_values, local_batches

pipeline.ROW_SHUFFLE_WINDOW = WINDOW  # as in the parent
text_cfg = json.loads(open(spec).read())
batches = local_batches(text_cfg)  # the layout from jax
values = global_values(text_cfg, batches)
np.savez(out, **batches, **{"value__" + k: v for k, v in values.items()})
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(text_cfg, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "spec.json").write_text(json.dumps(text_cfg))
    env = {**devices_env(2), "PYTHONPATH": str(ROOT)}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(p), str(port),
                               str(tmp_path / "spec.json"), str(tmp_path / f"p{p}.npz")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in range(2)]
    try:
        logs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-4000:]
    parts = [dict(np.load(tmp_path / f"p{p}.npz")) for p in range(2)]

    whole = local_batches(text_cfg, process_index=0, process_count=1)
    for k, want in whole.items():  # rows of the two processes, in process order = the one-process batch
        assert parts[0][k].shape == (STEPS, B // 2, T), k
        np.testing.assert_array_equal(np.concatenate([parts[0][k], parts[1][k]], axis=1), want, err_msg=k)

    one = global_values(text_cfg, whole, process_index=0, process_count=1)
    for p in range(2):
        np.testing.assert_array_equal(parts[p]["value__inputs"], whole["packed__inputs"][0])  # the global array
        assert parts[p]["value__masked_sum"] == one["masked_sum"]
        assert parts[p]["value__val_tokens"] == one["val_tokens"]
        for k in ("loss", "grad_norm", "val_loss"):
            np.testing.assert_allclose(parts[p][f"value__{k}"], one[k], rtol=1e-5, err_msg=k)
