"""Study figures of the paper reproductions (scaling.analysis.papers) on synthetic sweeps with known answers."""

import numpy as np
import pandas as pd
import pytest

from scaling.analysis import figures, papers
from scaling.analysis.report import SweepData


def _data(tmp_path, runs: list[dict], curve_steps: int = 5) -> SweepData:
    """SweepData from run rows; each run gets a validation curve falling to its final loss."""
    rows, curves = [], []
    for i, r in enumerate(runs):
        r = {"run_id": f"r{i}", "budget": np.nan, "size": "", "status": "done", "batch_size": 1,
             "non_embedding_params": r.get("params", 1000) * 0.8, **r}
        r.setdefault("steps", 100)
        r.setdefault("tokens", r["steps"] * r["context"])
        rows.append(r)
        for k in range(1, curve_steps + 1):
            f = k / curve_steps
            curves.append({"run_id": r["run_id"], "step": int(r["steps"] * f), "tokens": r["tokens"] * f,
                           "flops": r["flops"] * f, "train_loss": np.nan,
                           "val_loss": r["final_val_loss"] + (1 - f) * 1.5, "val_bpb": np.nan, "lr": np.nan})
    df = pd.DataFrame(rows)
    return SweepData(path=tmp_path, runs=df, curves=pd.DataFrame(curves), counts={"done": len(df)}, sweeps=["s"],
                     axes=[], not_done=df.iloc[0:0])


def test_every_paper_figure_is_registered():
    for name in ("power_attention", "sympow", "context_size", "mamba_scaling"):
        module, fn = figures.FIGURES[name][0].split(":")
        assert module == "scaling.analysis.papers" and callable(getattr(papers, fn))


def test_power_attention_figure_compares_with_the_paper(tmp_path):
    runs = [{"variant": v, "family": fam, "context": ctx, "state_size": 100, "params": 1000, "flops": b,
             "budget": b, "final_val_loss": loss + (0.2 if b < 2e12 else 0.0)}
            for v, fam, ctx, loss in (("attention", "attention", 64, 1.70), ("window", "attention", 256, 1.72),
                                      ("power", "retention", 256, 1.65))
            for b in (1e12, 3e12)]
    fig = papers.power_attention(_data(tmp_path, runs), tmp_path / "out")
    assert {p.name for p in fig.paths} == {"power_attention.png", "power_attention.svg"}
    text = "\n".join(fig.lines)
    assert "| power | 256 |" in text and "1.6500 | 1.613 |" in text and "1.7000 | 1.631 |" in text
    with pytest.raises(figures.FigureSkipped, match="variant 'attention'"):
        papers.power_attention(_data(tmp_path, [r for r in runs if r["variant"] != "attention"]), tmp_path)


def test_sympow_figure_orders_by_state(tmp_path):
    runs = [{"variant": v, "family": fam, "context": 128, "state_size": s, "params": 1000, "flops": 1e12,
             "final_val_loss": loss}
            for v, fam, s, loss in (("attention", "attention", 32768, 1.6), ("sympow-p2", "retention", 5184, 1.7),
                                    ("sympow-p4", "retention", 47520, 1.62))]
    fig = papers.sympow(_data(tmp_path, runs), tmp_path)
    body = fig.lines[2:]
    assert [line.split(" | ")[0].strip("| ") for line in body] == ["sympow-p2", "attention", "sympow-p4"]
    with pytest.raises(figures.FigureSkipped, match="no finished run"):
        papers.sympow(_data(tmp_path, []), tmp_path)


def test_context_size_figure_finds_the_u_minimum(tmp_path):
    """Losses on exact parabolas in log2 context with minima at 2^6 and 2^8 (and a monotone size): the table
    gives the fitted optima; a size without a U is reported, not fitted."""
    runs = []
    for v, t_opt, params in (("small", 64, 1000), ("large", 256, 4000), ("flat", None, 9000)):
        for ctx in (16, 64, 256, 1024):
            loss = 2.0 + 0.05 * (np.log2(ctx) - np.log2(t_opt)) ** 2 if t_opt else 2.0 - 0.01 * np.log2(ctx)
            runs.append({"variant": v, "family": "attention", "context": ctx, "state_size": ctx, "params": params,
                         "flops": 1e12, "budget": 1e12, "final_val_loss": loss})
    fig = papers.context_size(_data(tmp_path, runs), tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line for line in fig.lines[2:]}
    assert "| 64 | 2.0000" in rows["small"] and "| 256 | 2.0000" in rows["large"]
    assert "no U shape" in rows["flat"]


def test_mamba_scaling_figure_has_a_panel_per_context(tmp_path):
    runs = []
    for ctx in (128, 512):
        for fam, v in (("attention", "transformer"), ("mamba", "mamba2")):
            for i, n in enumerate((20_000, 40_000, 80_000)):
                tokens = 20 * n
                runs.append({"variant": f"{v}-{i}", "family": fam, "context": ctx, "state_size": 10, "params": n,
                             "tokens": tokens, "flops": 6.0 * n * tokens, "steps": tokens // ctx,
                             "final_val_loss": 3.0 * (6.0 * n * tokens) ** -0.05 + (0.0 if fam == "mamba" else 0.05)})
    fig = papers.mamba_scaling(_data(tmp_path, runs), tmp_path)
    assert (tmp_path / "mamba_scaling.png").exists()
    assert sum("| Mamba-2 | 512 |" in line for line in fig.lines) == 3
    assert all("| 20.0 |" in line for line in fig.lines[2:])  # tokens per parameter
