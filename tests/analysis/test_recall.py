"""Recall study figures: recall_vs_state (accuracy vs state size per family), loss_vs_position (eval_contexts)."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from scaling.analysis import figures, recall


def _runs(rows):
    return pd.DataFrame([{"run_id": f"r{i}", "params": 1000.0, **r} for i, r in enumerate(rows)])


def test_recall_vs_state_table_and_figure(tmp_path):
    runs = _runs([
        {"family": "retention", "variant": "p2-hd16", "state_size": 18496.0, "final_task_accuracy": 0.8},
        {"family": "retention", "variant": "p1-hd16", "state_size": 2176.0, "final_task_accuracy": 0.2},
        {"family": "retention", "variant": "p4-hd4", "state_size": 6752.0, "final_task_accuracy": 0.15},
        {"family": "attention", "variant": "attention", "state_size": 8192.0, "final_task_accuracy": 0.9},
        {"family": "attention", "variant": "attention", "state_size": 8192.0, "final_task_accuracy": 1.0},  # 2 seeds
        {"family": "mamba", "variant": "d4", "state_size": 1840.0, "final_task_accuracy": np.nan},  # not a task run
    ])
    table = recall.recall_table(runs)
    assert table[["family", "variant"]].values.tolist() == [["attention", "attention"], ["retention", "p1-hd16"],
                                                            ["retention", "p4-hd4"], ["retention", "p2-hd16"]]
    assert table["accuracy"].tolist() == pytest.approx([0.95, 0.2, 0.15, 0.8])
    assert table["runs"].tolist() == [2, 1, 1, 1]
    # p4-hd4 has more state than p1-hd16 but recalls less: off its family's frontier
    assert table["frontier"].tolist() == [True, True, False, True]
    fig = recall.recall_vs_state(SimpleNamespace(runs=runs, path=tmp_path), tmp_path)
    assert {p.name for p in fig.paths} == {"recall_vs_state.png", "recall_vs_state.svg"}
    assert "| attention | attention | 8,192 | 1,000 | 0.950 | 2 | yes |" in fig.lines
    assert "| retention | p4-hd4 | 6,752 | 1,000 | 0.150 | 1 | no |" in fig.lines
    with pytest.raises(figures.FigureSkipped, match="task_accuracy"):
        recall.recall_vs_state(SimpleNamespace(runs=runs.assign(final_task_accuracy=np.nan), path=tmp_path), tmp_path)
    assert figures.FIGURES["recall_vs_state"][0] == "scaling.analysis.recall:recall_vs_state"


def _row(context, loss, tokens, acc=None):
    row = {"context": context, "val_loss": float(np.sum(np.nan_to_num(loss) * tokens) / tokens.sum()),
           "loss_by_position": [None if n == 0 else float(v) for v, n in zip(loss, tokens, strict=True)],
           "accuracy_by_position": [None] * context, "tokens_by_position": tokens.astype(int).tolist()}
    if acc is not None:
        row["task_accuracy"] = acc
    return row


def test_binned_loss_is_the_token_weighted_mean_per_bin():
    rng = np.random.default_rng(0)
    loss, tokens = rng.random(40) + 1.0, rng.integers(0, 3, size=40).astype(float)
    x, y = recall.binned_loss(_row(40, loss, tokens), n_bins=6)
    edges = np.unique(np.round(np.geomspace(1, 41, 7)).astype(int))
    want = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        sel = [t for t in range(40) if a <= t + 1 < b and tokens[t] > 0]
        if sel:
            want.append(sum(loss[t] * tokens[t] for t in sel) / sum(tokens[t] for t in sel))
    np.testing.assert_allclose(y, want)
    assert np.all(np.diff(x) > 0) and len(x) == len(want)


def test_loss_vs_position_reads_each_runs_eval_contexts(tmp_path):
    runs = _runs([{"family": "attention", "variant": "attention"}, {"family": "mamba", "variant": "mamba-d64"},
                  {"family": "mamba", "variant": "no-file"}])
    ones = lambda n: np.ones(n)  # noqa: E731
    files = {"r0": {"train_context": 8, "step": 5, "contexts": [_row(8, ones(8), ones(8)), _row(16, 2 * ones(16),
                                                                                                ones(16))]},
             "r1": {"train_context": 8, "step": 5, "contexts": [_row(8, ones(8), ones(8), 0.75),
                                                                _row(16, ones(16), ones(16), 0.5)]}}
    for rid, obj in files.items():
        (tmp_path / "runs" / rid).mkdir(parents=True)
        (tmp_path / "runs" / rid / "eval_contexts.json").write_text(json.dumps(obj))
    data = SimpleNamespace(runs=runs, path=tmp_path)
    assert [e["run_id"] for e in recall.load_eval_contexts(data)] == ["r0", "r1"]
    fig = recall.loss_vs_position(data, tmp_path / "out")
    assert (tmp_path / "out" / "loss_vs_position.png").exists()
    assert "| attention | 1.000 | 2.000 |" in fig.lines  # corpus run: val_loss per context
    assert "| mamba-d64 | 0.750 | 0.500 |" in fig.lines  # task run: accuracy per context
    with pytest.raises(figures.FigureSkipped, match="eval_contexts"):
        recall.loss_vs_position(SimpleNamespace(runs=runs.iloc[2:], path=tmp_path), tmp_path)


def test_every_family_marker_is_filled():
    """The figures draw dominated points hollow, which a line marker (x, +) cannot show."""
    import matplotlib.markers

    from scaling.analysis import plots
    from scaling.analysis.load import FAMILIES

    for family in [*FAMILIES.values(), "hybrid", "something else"]:
        assert matplotlib.markers.MarkerStyle(plots.family_style(family)["marker"]).is_filled(), family
