"""The analysis notebooks (analysis/*.py, jupytext percent format) execute top to bottom in a Jupyter kernel.

They run in small mode (STATESCALE_SMALL=1: coarse start grids, few bootstrap resamples) on a synthetic sweep, in
the kernel named "python3" of this interpreter (the [dev] extra's ipykernel installs its spec into the venv;
when no such spec is found, one is written to a temporary folder for the test).
"""

import os
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "analysis"
CSV = "chinchilla_epoch_svg_extracted.csv"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment for the kernel: small mode, and a python3 kernel spec that runs this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    env = {"STATESCALE_SMALL": "1"}
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        prefix = tmp_path_factory.mktemp("kernels")
        install(prefix=str(prefix))  # argv "python" is replaced by sys.executable when the kernel starts
        env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(prefix / "share" / "jupyter"),
                                                            os.environ.get("JUPYTER_PATH")]))
    return env


def _execute(name: str, env: dict[str, str], monkeypatch) -> list[dict]:
    """Run analysis/<name> in a fresh kernel (working directory analysis/); returns the code cells' outputs."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = jupytext.read(NOTEBOOKS / name)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=240,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _text(outputs) -> str:
    parts = []
    for o in outputs:
        parts.append(o.get("text", ""))
        parts.append(o.get("data", {}).get("text/plain", ""))
        parts.append(o.get("data", {}).get("text/markdown", ""))
    return "\n".join(parts)


def _images(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_compute_optimal_frontier(kernel_env, monkeypatch, tmp_path):
    from tests.analysis.synthetic import synthetic_sweep

    sweep = synthetic_sweep(tmp_path / "sweep", variants=["retention-p2-hd32", "mamba-d64"])
    outputs = _execute("compute_optimal_frontier.py", {**kernel_env, "STATESCALE_SWEEP": str(sweep)}, monkeypatch)
    text = _text(outputs)
    assert str(sweep) in text and "Demo on synthetic data" not in text
    for approach in ("Chinchilla approach 1", "Chinchilla approach 2", "Chinchilla approach 3"):
        assert approach in text
    assert _images(outputs) >= 3  # loss vs FLOPs, isoFLOP profiles, allocation


def test_state_size_laws_demo(kernel_env, monkeypatch):
    outputs = _execute("state_size_laws.py", {**kernel_env, "STATESCALE_SWEEP": "synthetic"}, monkeypatch)
    text = _text(outputs)
    assert "Demo on synthetic data" in text
    assert "retention" in text and "mamba" in text and "gamma" in text
    assert "skipped attention: state size is a function of model size" in text
    assert "N_opt" in text and "S_opt" in text  # the compute-optimal state table
    assert _images(outputs) >= 2


def test_notebook_rejects_a_missing_sweep(kernel_env, monkeypatch, tmp_path):
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="no sweep.db"):
        _execute("compute_optimal_frontier.py", {**kernel_env, "STATESCALE_SWEEP": str(tmp_path / "none")},
                 monkeypatch)


def test_chinchilla_reproduction(kernel_env, monkeypatch):
    monkeypatch.delenv("STATESCALE_CHINCHILLA_CSV", raising=False)
    outputs = _execute("chinchilla_reproduction.py", kernel_env, monkeypatch)
    text = _text(outputs)
    assert str(ROOT / "tests" / "data" / CSV) in text  # the vendored copy
    assert "245 points, 240 used" in text
    # the held-out section: the 37 runs with N >= 2.5e9 predicted from the others (numbers: test_fits.py)
    assert "held out 37 runs" in text and "inside the 90% interval 25/37" in text
    # the comparison table: this fit next to Epoch's values, within 1% (the notebook prints the differences)
    table = next(o["data"]["text/plain"] for o in outputs if "Epoch AI (this file)" in o.get("data", {}).get(
        "text/plain", ""))
    rows = {}
    for line in table.splitlines()[1:]:  # a wide frame wraps into blocks: keep each row's first block
        if line.split():
            rows.setdefault(line.split()[0], line.split())
    for name, want in (("E", 1.817), ("alpha", 0.3473), ("beta", 0.3672), ("A", 477.8), ("B", 2143.9)):
        assert abs(float(rows[name][1]) / want - 1) < 0.01, rows[name]
    assert _images(outputs) == 1


def test_notebooks_are_percent_format_with_a_python3_kernel():
    for path in sorted(NOTEBOOKS.glob("*.py")):
        nb = jupytext.read(path)
        assert nb.metadata["kernelspec"]["name"] == "python3", path.name
        assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent", path.name
        assert sum(c.cell_type == "markdown" for c in nb.cells) >= 2, path.name
