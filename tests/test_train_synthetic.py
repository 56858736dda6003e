"""Training on a synthetic task: eval rows carry task_accuracy (checked against the model's own predictions on the
held-out batches), and train.eval_contexts writes the per-position evaluation at each context."""

import json
from pathlib import Path

import numpy as np
import pytest

from scaling import config
from scaling.data import make_eval_batches, synthetic
from scaling.train import load_run, train

ROOT = Path(__file__).parents[1]
TINY = ["model.d_model=32", "model.n_layers=1", "model.pattern=M", "model.mamba.head_dim=16",
        "model.mamba.d_state=8", "model.mamba.chunk_size=16", "train.batch_size=4", "train.context=32",
        "train.log_every=1", "data.eval_tokens=256", "train.warmup_steps=2", "data.source=mqar",
        "data.task.vocab_size=16", "data.task.num_kv_pairs=4", "train.checkpoint_every=3"]


def _rows(workdir, kind):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_train_writes_task_accuracy_and_per_position_evaluation(tmp_path):
    cfg = config.load(None, TINY + ["train.steps=6", "train.eval_every=3", "train.eval_contexts=[32, 64]"])
    res = train(cfg, tmp_path, progress=False)
    assert res.status == "done"
    evals = _rows(tmp_path, "eval")
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0.0 <= r["task_accuracy"] <= 1.0 for r in evals)
    assert res.summary["task_accuracy"] == evals[-1]["task_accuracy"]

    # the reported accuracy is the exact match of the final model's argmax on the held-out batches
    _, model, step = load_run(tmp_path)
    assert step == 6
    batches = make_eval_batches(cfg.data, batch_size=4, context=32)
    preds = [np.asarray(model(b["inputs"])).argmax(-1) for b in batches]
    hits = sum(synthetic.answer_accuracy(p, b) * b["loss_mask"].sum() for p, b in zip(preds, batches, strict=True))
    total = sum(b["loss_mask"].sum() for b in batches)
    assert evals[-1]["task_accuracy"] == pytest.approx(hits / total, abs=1e-6)

    out = json.loads((tmp_path / "eval_contexts.json").read_text())
    assert out["train_context"] == 32 and out["step"] == 6
    rows = {r["context"]: r for r in out["contexts"]}
    assert sorted(rows) == [32, 64]
    assert rows[32]["val_loss"] == pytest.approx(evals[-1]["val_loss"], rel=1e-5)
    assert rows[32]["task_accuracy"] == pytest.approx(evals[-1]["task_accuracy"], abs=1e-6)
    for context, row in rows.items():
        want = sum(b["loss_mask"].sum(0) for b in make_eval_batches(cfg.data, batch_size=4, context=context))
        assert row["tokens_by_position"] == want.astype(int).tolist()
        loss = np.array([np.nan if v is None else v for v in row["loss_by_position"]])
        assert np.isnan(loss).tolist() == (want == 0).tolist()
        assert np.nansum(loss * want) / want.sum() == pytest.approx(row["val_loss"], rel=1e-5)


def test_text_runs_write_no_task_accuracy(tmp_path):
    cfg = config.load(None, [o for o in TINY if not o.startswith("data.")] + ["data.eval_tokens=128",
                                                                              "train.steps=2", "train.eval_every=2"])
    train(cfg, tmp_path, progress=False)
    (ev,) = _rows(tmp_path, "eval")
    assert "task_accuracy" not in ev and not (tmp_path / "eval_contexts.json").exists()
