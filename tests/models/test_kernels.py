"""scaling.models.kernels: the model's lookup of the function that runs an op (XLA or Pallas, interpret mode on
CPU), against the XLA op itself."""

import numpy as np
import pytest

import pallas_kernels
from scaling.models import kernels
from scaling.ops.power_retention import power_retention
from scaling.ops.ssd import ssd
from tests.helpers import rel_err


def _retention_inputs():
    rng = np.random.default_rng(0)
    return [np.asarray(rng.standard_normal(s), np.float32) for s in ((1, 5, 4, 3), (1, 5, 2, 3), (1, 5, 2, 2))]


def _ssd_inputs():
    rng = np.random.default_rng(1)
    x, B, C = (np.asarray(rng.standard_normal(s), np.float32) for s in ((1, 6, 2, 3), (1, 6, 1, 2), (1, 6, 1, 2)))
    dt = np.asarray(rng.uniform(0.1, 0.5, (1, 6, 2)), np.float32)
    return dict(x=x, dt=dt, A=-np.array([0.5, 1.0], np.float32), B=B, C=C)


def test_lookup_picks_the_kernel_only_for_the_chunked_form_without_segments():
    assert kernels.lookup("power_retention", "pallas") is pallas_kernels.power_retention
    assert kernels.lookup("ssd", "pallas") is pallas_kernels.ssd
    assert kernels.lookup("power_retention", "xla") is power_retention
    assert kernels.lookup("power_retention", "pallas", form="recurrent") is power_retention
    assert kernels.lookup("ssd", "pallas", segments=True) is ssd
    with pytest.raises(ValueError, match="backend = 'triton': must be one of 'xla', 'pallas'"):
        kernels.lookup("ssd", "triton")
    with pytest.raises(ValueError, match="op = 'gla'"):
        kernels.lookup("gla")


def test_the_kernels_compute_the_xla_ops():
    q, k, v = _retention_inputs()
    want = power_retention(q, k, v, chunk_size=4)
    assert rel_err(kernels.power_retention(q, k, v, chunk_size=4, backend="pallas"), want) < 1e-5
    rec = kernels.power_retention(q, k, v, form="recurrent", backend="pallas")  # no kernel for it: XLA
    assert rel_err(rec, power_retention(q, k, v, form="recurrent")) < 1e-5
    args = _ssd_inputs()
    assert rel_err(kernels.ssd(**args, chunk_size=4, backend="pallas"), ssd(**args, chunk_size=4)) < 1e-5


def test_ops_and_kernels_do_not_import_each_other():
    """The ops never import pallas_kernels, and the kernels use the ops' public helpers only (the structure
    report's cycles, issue 18)."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    for path in (root / "scaling/ops").glob("*.py"):
        names = {n.module or "" for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import) for a in n.names}
        assert not any(n.startswith("pallas_kernels") for n in names), path
    for path in (root / "pallas_kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scaling"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"
