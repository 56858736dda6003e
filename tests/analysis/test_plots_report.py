"""The sweep report: loading sweep.db into DataFrames, the fits the data supports, figures and report.md.

Sweeps here are synthetic (``tests.analysis.synthetic.synthetic_sweep``): written through the store's own API,
with losses from a known law (no training), so the fitted exponents can be checked against the truth. The fits
use the coarse start grids (``fast=True``) and few bootstrap resamples to keep the file to seconds.
"""

import hashlib
import json
import re
import struct
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.figure import Figure

from scaling.analysis import fit_from_dict, plots, report
from scaling.cli import main
from scaling.sweep.store import Store, owner_token
from tests.analysis import synthetic

BOOT = 30
FIGURES = ("loss_vs_flops", "isoflop", "compute_optimal_allocation", "loss_vs_state", "state_law_fit")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def _svg_texts(path):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return root, " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))


def _row(md: str, section: str, group: str) -> list[str]:
    """The cells of ``group``'s row in the table under the heading that starts with ``section``."""
    fitted = md.split("## Fitted laws", 1)[1]
    part = fitted.split(f"### {section}", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == group:
            return cells
    raise AssertionError(f"no row {group!r} under {section!r}")


def _header(md: str, section: str) -> list[str]:
    part = md.split("## Fitted laws", 1)[1].split(f"### {section}", 1)[1]
    line = next(x for x in part.splitlines() if x.startswith("| "))
    return [c.strip() for c in line.strip().strip("|").split("|")]


CELL = re.compile(r"^(-?[\d.e+-]+) \[(-?[\d.e+-]+), (-?[\d.e+-]+)\]$")


def _estimate(cell: str) -> tuple[float, float, float]:
    m = CELL.match(cell)
    assert m, f"{cell!r} is not 'estimate [lo, hi]'"
    return tuple(float(x) for x in m.groups())


# ------------------------------------------------------------------------------------------------------------
# The full report on a synthetic isoFLOP sweep: 3 families, 7 variants, 9 sizes, 3 budgets


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sweep")
    synthetic.synthetic_sweep(sweep)
    db = (sweep / "sweep.db").read_bytes()
    result = report.write_report(sweep, bootstrap=BOOT, fast=True, progress=False)
    return sweep, result, hashlib.sha256(db).hexdigest()


def test_report_writes_every_figure_as_png_and_svg(analysed):
    sweep, result, _ = analysed
    out = sweep / "analysis"
    assert result.out == out and result.report == out / "report.md"
    for name in FIGURES:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png in result.figures and svg in result.figures
        w, h = _png_size(png)
        assert w >= 600 and h >= 400 and png.stat().st_size > 20_000  # drawn, not a blank canvas
        root, texts = _svg_texts(svg)
        assert len([e for e in root.iter() if e.tag.endswith("path")]) > 20
        assert "(FLOPs)" in texts or "(elements per sequence)" in texts or "parameters" in texts
    _, texts = _svg_texts(out / "loss_vs_flops.svg")
    for label in ("training compute C (FLOPs)", "state size S (elements per sequence)", "nats/token",
                  "approach-1 frontier", "curves: validation loss"):
        assert label in texts
    # the sweep has one context: no context figure, and report.md says why
    assert not (out / "loss_vs_context.png").exists()
    assert "- not drawn: Loss vs training context at fixed FLOPs: a single training context" in \
        result.report.read_text()
    for name in ("fits.json", "runs.csv"):
        assert (out / name).stat().st_size > 0


def test_report_tables_hold_the_fitted_laws_with_intervals(analysed):
    _, result, _ = analysed
    md = result.report.read_text()
    assert (f"percentile intervals over {BOOT} bootstrap replicates (approach 3, the state law) or {20 * BOOT:,} "
            "(approaches 1 and 2, the context law") in md
    law = synthetic.SYNTHETIC_LAW
    # state-size law per family: every parameter with its interval; retention's exponents near the truth
    header = _header(md, "State-size law")
    cells = dict(zip(header, _row(md, "State-size law", "retention"), strict=True))
    assert cells["law"] == "with D"
    est = {k: _estimate(cells[k]) for k in ("E", "A", "alpha", "B", "gamma", "C", "beta")}
    for name, truth in (("alpha", law["alpha"]), ("beta", law["beta"]), ("gamma", law["state"]["retention"][1])):
        v, lo, hi = est[name]
        assert lo <= v <= hi
        assert lo <= truth <= hi, f"retention {name}: truth {truth} outside [{lo}, {hi}]"
        assert abs(v - truth) < 0.03
    assert est["E"][1] < law["E"] + law["K"] / 512 ** law["delta"] < est["E"][2]  # E absorbs the context term
    # approaches 1-3 per model group, with intervals
    for section in ("Chinchilla approach 1", "Chinchilla approach 2"):
        cells = dict(zip(_header(md, section), _row(md, section, "mamba-d64"), strict=True))
        v, lo, hi = _estimate(cells["a (N_opt)"])
        # approach 1 on final points: each budget's best run, so N_opt sits on the size grid and a bootstrap may
        # reproduce the same winners (lo = v); approach 2's parabolas interpolate between sizes
        assert 0.35 < v < 0.6 and lo <= v <= hi and lo < hi
    cells = dict(zip(_header(md, "Chinchilla approach 3"), _row(md, "Chinchilla approach 3", "retention-p2-hd32"),
                     strict=True))
    for name in ("E", "A", "alpha", "B", "beta", "a", "b"):
        _estimate(cells[name])
    # the data cannot support attention's state law (its state is a function of its size): skipped, with why
    assert "- State-size law, attention: state size is a function of model size" in md
    assert "- Context law, all runs: the sweep has a single training context (512 tokens)" in md


def test_report_run_table_and_fits_json(analysed):
    _, result, _ = analysed
    md = result.report.read_text()
    runs = result.data.runs
    assert f"runs analysed: {len(runs)} done of {len(runs)}" in md
    assert all(f"| {rid} |" in md for rid in runs["run_id"])
    records = json.loads((result.out / "fits.json").read_text())
    assert len(records) == len(result.records)
    for rec, d in zip(result.records, records, strict=True):
        assert d["kind"] == rec.kind and d["group"] == rec.group
        if rec.ok:
            back = fit_from_dict(d["fit"])
            assert back.params == pytest.approx(rec.fit.params)
        else:
            assert d["fit"] is None and d["reason"] == rec.reason


def test_analysis_leaves_the_database_alone(analysed):
    sweep, _, before = analysed
    assert hashlib.sha256((sweep / "sweep.db").read_bytes()).hexdigest() == before


def test_chinchilla_truth_recovered_when_C_is_6ND(tmp_path):
    """No state term and no state FLOPs: C = 6ND and the allocation exponent is beta / (alpha + beta)."""
    law = {**synthetic.SYNTHETIC_LAW, "state": {"mamba": (0.0, 0.3)}}
    synthetic.synthetic_sweep(tmp_path, variants=["mamba-d64"], law=law, state_flops=0.0)
    data = report.load_sweep(tmp_path)
    recs = {r.kind: r for r in report.fit_sweep(data, bootstrap=50, fast=True,
                                                 kinds=["envelope", "isoflop", "parametric"])}
    a_true = law["beta"] / (law["alpha"] + law["beta"])
    for kind in ("envelope", "isoflop", "parametric"):
        fit = recs[kind].fit
        assert fit is not None, recs[kind].reason
        lo, hi = fit.ci["a"]
        assert lo <= a_true <= hi and abs(fit.params["a"] - a_true) < 0.03, (kind, fit.params["a"], (lo, hi))
    p = recs["parametric"].fit.params
    assert abs(p["alpha"] - law["alpha"]) < 0.05 and abs(p["beta"] - law["beta"]) < 0.05


def test_context_sweep_fits_the_context_law_and_draws_it(tmp_path):
    """Attention pays for context, so at fixed FLOPs its loss is U-shaped in context; Mamba's is not."""
    synthetic.synthetic_sweep(tmp_path, variants=["attention", "mamba-d64"], sizes=[(256, 4)],
                           contexts=[256, 512, 1024, 2048, 4096, 8192], ratio_range=(0, 1e9))
    result = report.write_report(tmp_path, tmp_path / "out", bootstrap=20, fast=True, progress=False)
    assert (tmp_path / "out" / "loss_vs_context.png").stat().st_size > 20_000
    _, texts = _svg_texts(tmp_path / "out" / "loss_vs_context.svg")
    assert "training context T (tokens)" in texts
    att = next(r for r in result.records if r.kind == "context_law" and r.group == "attention")
    T_opt = att.fit.data["budget_context_opt"]
    assert np.all(np.diff(T_opt) > 0) and not att.fit.data["budget_extrapolated"].any()  # grows with compute
    md = result.report.read_text()
    cells = _row(md, "Context law", "attention")
    assert _estimate(cells[2])[0] > 0  # T_opt = k C^a with a > 0
    # one size per group: approaches 1-3 are skipped, with the reason
    assert "- Chinchilla approach 2, attention · context=256: needs >= 2 FLOP budgets with >= 3 model sizes" in md
    # Mamba's optimum lies beyond the longest context trained: reported as an extrapolation
    assert "mamba-d64" in md and "*" in _row(md, "Context law", "mamba-d64")[1]


# ------------------------------------------------------------------------------------------------------------
# The loader on a database with runs in every status


def _config(pattern, n_layers=2):
    return {"model": {"pattern": pattern, "n_layers": n_layers, "d_model": 64}, "train": {"context": 128}}


def _mixed_store(path):
    """runs: done (A, R, M, hybrid MMMA x 4 layers, MMMA cut to 2 layers = mamba, one without a val loss),
    failed, diverged, pending and running."""
    runs = []
    specs = [("a", "A", 2), ("r", "R", 2), ("m", "M", 2), ("h", "MMMA", 4), ("cut", "MMMA", 2), ("noval", "A", 2),
             ("fail", "R", 2), ("div", "M", 2), ("pend", "A", 2), ("run", "R", 2)]
    for i, (rid, pattern, layers) in enumerate(specs):
        runs.append({"id": rid, "config": _config(pattern, layers), "variant": f"v-{pattern}", "budget": 1e12,
                     "total_steps": 4, "context": 128, "batch_size": 2, "flops_per_token": 1e6 * (i + 1),
                     "params": 1000 * (i + 1), "non_embedding_params": 900 * (i + 1), "state_size": 64 * (i + 1),
                     "point": json.dumps({"train.lr": 0.001 * (1 + i % 2)})})
    owner = owner_token()
    with Store(path) as s:
        s.add_sweep("mixed", {"name": "mixed"})
        s.add_runs("mixed", runs)
        for rid, *_ in specs:
            if rid == "pend":
                continue
            row = s.claim(owner, ids=[rid])
            assert row["id"] == rid
            if rid == "run":
                continue  # claimed, still running
            metrics = [{"step": k, "tokens": 256 * k, "flops": 1e9 * k, "train_loss": 5.0 - k,
                        "val_loss": None if rid == "noval" else 5.1 - k} for k in (1, 2, 3, 4)]
            status = {"fail": "failed", "div": "diverged"}.get(rid, "done")
            summary = {"steps": 4, "tokens": 1024, "flops": 4e9, "final_train_loss": 1.0,
                       "final_val_loss": None if rid == "noval" else 1.1}
            s.finish(rid, status, summary=summary, metrics=metrics, owner=owner,
                     error="boom" if rid == "fail" else None)
    return path


def test_loader_keeps_only_done_runs(tmp_path):
    _mixed_store(tmp_path)
    runs = report.load_runs(tmp_path)
    assert list(runs["run_id"]) == ["a", "r", "m", "h", "cut", "noval"]
    assert dict(zip(runs["run_id"], runs["family"], strict=True)) == {
        "a": "attention", "r": "retention", "m": "mamba", "h": "hybrid", "cut": "mamba", "noval": "attention"}
    for col in report.RUN_COLUMNS:
        assert col in runs
    assert "train.lr" in runs and runs.attrs["axes"] == ["train.lr"]
    assert runs.loc[runs["run_id"] == "r", "non_embedding_params"].item() == 1800
    assert runs.loc[runs["run_id"] == "a", "final_val_loss"].item() == pytest.approx(1.1)
    assert np.isnan(runs.loc[runs["run_id"] == "noval", "final_val_loss"].item())
    assert (runs["status"] == "done").all() and runs["flops"].eq(4e9).all()

    data = report.load_sweep(tmp_path)
    assert data.counts == {"pending": 1, "running": 1, "done": 6, "failed": 1, "diverged": 1}
    assert set(data.curves["run_id"]) == set(runs["run_id"])  # no curves of failed or diverged runs
    assert list(data.curves.columns) == list(report.CURVE_COLUMNS)
    assert len(data.curves) == 6 * 4
    assert dict(zip(data.not_done["run_id"], data.not_done["status"], strict=True)) == {
        "fail": "failed", "div": "diverged", "pend": "pending", "run": "running"}
    assert list(report.load_runs(tmp_path, statuses=("failed", "diverged"))["run_id"]) == ["fail", "div"]
    with pytest.raises(ValueError, match="statuses"):
        report.load_runs(tmp_path, statuses=("finished",))


def test_report_on_too_little_data_skips_fits_and_says_why(tmp_path):
    _mixed_store(tmp_path)
    result = report.write_report(tmp_path, bootstrap=0, fast=True, progress=False)
    assert not any(r.ok for r in result.records)
    md = result.report.read_text()
    assert "No law could be fitted on this data" in md
    assert "needs >= 3 model sizes" in md and "## Skipped fits" in md
    assert "1 done run(s) have no final validation loss" in md
    assert "### Runs not analysed" in md and "| fail | failed | boom |" in md
    assert (tmp_path / "analysis" / "loss_vs_flops.png").exists()  # the runs are still drawn
    assert set(result.skipped_figures) >= {"isoflop", "compute_optimal_allocation", "state_law_fit"}


def test_report_on_a_sweep_with_nothing_done(tmp_path):
    with Store(tmp_path) as s:
        s.add_sweep("empty", {})
        s.add_runs("empty", [{"id": "p0", "config": _config("A"), "context": 128}])
    result = report.write_report(tmp_path, progress=False)
    assert result.figures == [] and not any(r.ok for r in result.records)
    assert "Nothing to analyse yet" in result.report.read_text()


def test_bad_options_and_missing_sweep(tmp_path):
    with pytest.raises(ValueError, match="bootstrap"):
        report.write_report(tmp_path, bootstrap=-1)
    with pytest.raises(ValueError, match="params = 'all': must be one of non_embedding, total"):
        report.write_report(tmp_path, params="all")
    with pytest.raises(FileNotFoundError, match="no sweep.db"):
        report.load_sweep(tmp_path)
    with pytest.raises(ValueError, match="kinds"):
        report.fit_sweep(None, kinds=["approach4"])


def test_cli_analyze(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nowhere")]) == 2
    assert "no sweep.db" in capsys.readouterr().err
    _mixed_store(tmp_path / "sweep")
    assert main(["analyze", str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--bootstrap", "0",
                 "--fast", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "analysed 6 done runs" in out and str(tmp_path / "out" / "report.md") in out
    assert (tmp_path / "out" / "report.md").is_file()
    assert main(["analyze", str(tmp_path / "sweep"), "--bootstrap", "-3"]) == 2


def test_families_match_the_model_registry():
    from scaling.models.registry import MIXERS

    assert report.FAMILIES == {letter: spec.key for letter, spec in MIXERS.items()}


# ------------------------------------------------------------------------------------------------------------
# Plot helpers


def test_envelopes_and_labels():
    x, y = plots.lower_envelope([1, 2, 2, 3, 4, 5], [5.0, 6.0, 4.0, 4.5, 3.0, 3.0])
    assert x.tolist() == [1, 2, 4] and y.tolist() == [5.0, 4.0, 3.0]
    C, L = plots.curve_envelope([([1.0, 10.0], [4.0, 2.0]), ([2.0, 100.0], [3.0, 1.0])], n_grid=5)
    assert C[0] == pytest.approx(1.0) and C[-1] == pytest.approx(100.0)
    assert L[0] == pytest.approx(4.0) and L[-1] == pytest.approx(1.0)
    assert np.all(L <= 4.0 + 1e-12)
    assert [plots.sci(v) for v in (1e15, 3e15, 1.5e12, 999.0, 0.0)] == ["1e15", "3e15", "1.5e12", "1e3", "0"]


def _plot_accuracy(data, out):  # a study figure registered by the test below
    from scaling.analysis.figures import FigureSkipped, StudyFigure

    runs = data.runs.dropna(subset=["final_task_accuracy"])
    if runs.empty:
        raise FigureSkipped("no run has a task accuracy")
    fig = Figure()
    fig.gca().plot(runs["state_size"], runs["final_task_accuracy"], "o")
    return StudyFigure(plots.save_figure(fig, out, "accuracy"), ["| run | accuracy |", "|---|---|"] +
                       [f"| {r} | {a:.2f} |" for r, a in zip(runs["run_id"], runs["final_task_accuracy"], strict=True)])


def test_extra_eval_metrics_and_study_figures(tmp_path, monkeypatch):
    """A run's other eval metrics reach runs.extra through collect() and come back as final_<metric> columns;
    a spec's figures are drawn by analyze, unknown names are refused, and missing data skips with a reason."""
    from scaling.analysis import figures
    from scaling.sweep import launchers, spec

    monkeypatch.setitem(figures.FIGURES, "accuracy", (f"{__name__}:_plot_accuracy", "Accuracy vs state"))
    with pytest.raises(spec.SpecError, match=r"sweep.figures: 'nope' is not a study figure; accepted: .*accuracy"):
        spec.expand({"name": "x", "base": "configs/models/transformer_tiny.py", "figures": ["nope"]})
    owner = owner_token()
    with Store(tmp_path) as store:
        store.add_sweep("s", {"name": "s", "figures": ["accuracy"]})
        store.add_runs("s", [{"id": rid, "config": {"model": {"pattern": "A", "n_layers": 1, "d_model": 8}},
                              "state_size": s, "context": 8, "batch_size": 1, "total_steps": 2,
                              "flops_per_token": 100.0}
                             for rid, s in (("a", 10), ("b", 100))])
        for rid, acc in (("a", 0.25), ("b", None)):
            row = store.claim(owner)
            wd = tmp_path / "runs" / rid
            wd.mkdir(parents=True)
            (wd / "status.json").write_text(json.dumps({"status": "done", "step": 2}))
            evals = {"kind": "eval", "step": 2, "val_loss": 1.5, "val_bpb": 2.0}
            if acc is not None:
                evals["task_accuracy"] = acc
            (wd / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 2, "loss": 1.4}) + "\n"
                                              + json.dumps(evals) + "\n")
            status, summary, metrics, err = launchers.collect(row, 0)
            assert status == "done"
            store.finish(rid, status, summary=summary, metrics=metrics, error=err, owner=owner)
    runs = report.load_runs(tmp_path)
    assert runs.attrs["axes"] == []
    assert runs.set_index("run_id")["final_task_accuracy"].to_dict()["a"] == pytest.approx(0.25)
    assert np.isnan(runs.set_index("run_id")["final_task_accuracy"]["b"])
    rep = report.write_report(tmp_path, bootstrap=0, fast=True, progress=False)
    text = rep.report.read_text()
    assert "## Study figures" in text and "### Accuracy vs state" in text and "| a | 0.25 |" in text
    assert (rep.out / "accuracy.png").exists() and (rep.out / "accuracy.svg").exists()
