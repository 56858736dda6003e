"""Study figures: plots a sweep spec asks for by name (``Sweep.figures``), drawn by ``scaling analyze``.

The generic figures of :mod:`scaling.analysis.report` (loss vs FLOPs, isoFLOP, state and context laws) suit any
sweep. A study with its own question (recall vs state size, loss vs position, a paper's curve) names its
figures in its spec, ``Sweep(..., figures=["recall_vs_state"])``, and ``scaling analyze`` draws them too.

Each entry of :data:`FIGURES` maps a name to ``("module:function", title)``. The function takes the
:class:`scaling.analysis.report.SweepData` and the output directory and returns a :class:`StudyFigure`
(the files it wrote and the markdown lines for report.md), or raises :class:`FigureSkipped` with the reason
when the sweep's data cannot support it (e.g. no run finished yet). Modules are imported only when drawn.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

# name -> ("module:function", title). Add an entry per study figure.
FIGURES: dict[str, tuple[str, str]] = {
    # paper reproductions (experiments/papers/, docs/papers/)
    "power_attention": ("scaling.analysis.papers:power_attention",
                        "Power attention vs softmax and windowed attention at equal FLOPs (Manifest AI 2025)"),
    "sympow": ("scaling.analysis.papers:sympow", "Symmetric power transformers: loss vs steps and vs state size"),
    "context_size": ("scaling.analysis.papers_context:context_size",
                     "Compute-optimal context size: loss vs training context"),
    "mamba_scaling": ("scaling.analysis.papers:mamba_scaling", "Mamba-2 vs Transformer++: loss vs training FLOPs"),
    "metamorphosis": ("scaling.analysis.papers_metamorphosis:metamorphosis",
                      "Metamorphosis: a transformer's attention swapped for power retention, then retrained"),
    # recall benchmarks (scaling/data/synthetic.py; experiments/mqar_state_size.py, length_generalisation.py)
    "recall_vs_state": ("scaling.analysis.recall:recall_vs_state", "Recall vs state size"),
    "loss_vs_position": ("scaling.analysis.recall:loss_vs_position", "Length generalisation: loss vs position"),
}


@dataclass
class StudyFigure:
    paths: list[Path]  # the files written (PNG and SVG)
    lines: list[str] = field(default_factory=list)  # markdown for report.md (tables of the plotted numbers)


class FigureSkipped(Exception):
    """The sweep's data cannot support the figure; the message says why."""


def check_names(names, where: str = "sweep.figures") -> None:
    """Raise ValueError naming the field and the accepted names for a name not in FIGURES."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"{where} = {names!r}: must be a list of figure names ({', '.join(sorted(FIGURES))})")
    for n in names:
        if n not in FIGURES:
            raise ValueError(f"{where}: {n!r} is not a study figure; accepted: {', '.join(sorted(FIGURES)) or 'none'}")


def requested(data) -> list[str]:
    """The figure names the sweeps in ``data`` ask for, in order, without repeats."""
    names: list[str] = []
    for spec in data.specs.values():
        names += [n for n in spec.get("figures") or [] if n not in names]
    return names


def draw(data, out: Path, names) -> tuple[list[Path], list[str], dict[str, str]]:
    """Draw ``names`` for ``data`` into ``out``: (files, report.md lines, {name: why skipped})."""
    check_names(list(names))
    paths: list[Path] = []
    lines: list[str] = []
    skipped: dict[str, str] = {}
    for name in names:
        target, title = FIGURES[name]
        module, fn = target.split(":")
        try:
            fig = getattr(importlib.import_module(module), fn)(data, Path(out))
        except FigureSkipped as e:
            skipped[name] = str(e)
            continue
        paths += fig.paths
        lines += [f"### {title}", ""]
        lines += [f"![{p.stem}]({p.name})" for p in fig.paths if p.suffix == ".png"] + [""]
        lines += fig.lines + [""] if fig.lines else []
    return paths, lines, skipped
