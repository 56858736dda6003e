"""Sharded training equals one device: meshes data=8, fsdp=8 and data=2 x fsdp=2 x tensor=2 over 8 host devices give
the one-device losses for every mixer and the hybrid (fp32, 5 steps); the layout rules; one-line mesh errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling import config, sharding
from tests.helpers import devices_env

ROOT = Path(__file__).parents[1]
MODELS = {  # mixer -> preset, overrides (heads divisible by tensor = 2, widths by fsdp = 8)
    "attention": ("transformer_tiny", ["model.attention.n_heads=2", "model.attention.n_kv_heads=2"]),
    "retention": ("power_retention_tiny", ["model.retention.n_heads=2", "model.retention.n_kv_heads=2"]),
    "mamba": ("mamba2_tiny", ["model.mamba.head_dim=16"]),
    "hybrid": ("hybrid_tiny", ["model.pattern='MRA'", "model.n_layers=3", "model.mamba.head_dim=16",
                               "model.attention.n_heads=2", "model.attention.n_kv_heads=2",
                               "model.retention.n_heads=2", "model.retention.n_kv_heads=2"]),
    "gla": ("gla_tiny", ["model.gla.n_heads=2", "model.gla.conv=4", "model.gla.chunk_size=8"]),
    "gated_delta": ("gated_delta_tiny", ["model.gated_delta.n_heads=2", "model.gated_delta.chunk_size=8"]),
    "based": ("based_tiny", ["model.based.n_heads=2", "model.based.feature_dim=4", "model.based.window=4",
                             "model.based.chunk_size=8", "model.based.conv=4"]),
}
FIRST = ("attention", "retention", "mamba", "hybrid")
NEW = ("gla", "gated_delta", "based")  # their own parameter names (gate_up, out_gate, beta, a, norm_w, ...)
COMMON = ["model.d_model=32", "model.n_layers=2", "train.batch_size=8", "train.context=16", "train.steps=5",
          "train.warmup_steps=1", "train.log_every=1", "train.eval_every=5", "train.checkpoint_every=2",
          "data.eval_tokens=64"]
MESHES = {"data8": {"data": 8}, "fsdp8": {"fsdp": 8}, "2x2x2": {"data": 2, "fsdp": 2, "tensor": 2}}

SCRIPT = """
import json, shutil, sys
from pathlib import Path
from scaling import config
from scaling.train import train
jobs = json.loads(sys.argv[1])
out = {}
for name, (path, sets, workdir, *resume) in jobs.items():
    r = train(config.load(path, sets), workdir, progress=False)
    if resume:  # drop the last checkpoint (as if killed after step 4), then resume on another mesh
        shutil.rmtree(Path(workdir) / "checkpoints" / "5")
        r = train(config.load(path, resume[0]), workdir, progress=False)
    rows = [json.loads(x) for x in open(workdir + "/metrics.jsonl")]
    out[name] = [x["loss"] for x in rows if x["kind"] == "train"] + [x["val_loss"] for x in rows if x["kind"] == "eval"]
print(json.dumps(out))
"""


def _run(jobs: dict, devices: int) -> dict:
    env = devices_env(devices)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(jobs)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(tmp_path, meshes_of: dict[str, list[str]], resume_on=None, extra=()):
    """Each mixer trained on one device and on each of its meshes (all mesh runs in one 8-device process, all
    references in one 1-device process: a process start costs more than a run of these sizes)."""
    one, many = {}, {}
    for mixer, meshes in meshes_of.items():
        preset, sets = MODELS[mixer]
        sets = [*sets, *extra]
        path = str(ROOT / f"configs/models/{preset}.py")
        one[mixer] = (path, COMMON + sets, str(tmp_path / f"{mixer}-1"))
        for label in meshes:
            mesh = MESHES[label]
            many[f"{mixer}/{label}"] = (path, COMMON + sets + [f"train.mesh={mesh!r}"],
                                        str(tmp_path / f"{mixer}-{label}"))
            if resume_on:
                many[f"{mixer}/{label}"] += ([*COMMON, *sets, f"train.mesh={MESHES[resume_on]!r}"],)
    ref, got = _run(one, 1), _run(many, 8)
    assert len(got) == sum(map(len, meshes_of.values()))
    for name, losses in got.items():
        assert len(losses) == 6
        np.testing.assert_allclose(losses, ref[name.split("/")[0]], rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_checkpoint_on_one_mesh_resumes_on_another(tmp_path):
    """The hybrid checkpointed at step 4 on the 3-axis mesh and resumed on pure FSDP (the last step and the
    evaluation run there) gives the one-device losses."""
    _check(tmp_path, {"hybrid": ["2x2x2"]}, resume_on="fsdp8")


@pytest.mark.long
def test_attention_retention_and_mamba_on_every_mesh_match_one_device(tmp_path):
    """Attention, power retention and Mamba-2 on data=8, fsdp=8 and 2x2x2: 5 steps and the evaluation within 1e-5 of
    one device (one checkpoint, at the end: the resume test checks the rest). The MRA hybrid: the slow test below."""
    _check(tmp_path, {m: list(MESHES) for m in FIRST if m != "hybrid"}, extra=["train.checkpoint_every=5"])


@pytest.mark.long
def test_gla_gated_delta_and_based_on_the_3_axis_mesh_match_one_device(tmp_path):
    """GLA (with its conv), Gated DeltaNet and Based (with its conv) on data=2 x fsdp=2 x tensor=2: the default
    rules lay out their own parameters (gate_up, out_gate, beta, a, A_log, q_f, conv_w, ...) and the losses stay
    within 1e-5 of one device. The other meshes: the slow test below."""
    _check(tmp_path, {m: ["2x2x2"] for m in NEW}, extra=["train.checkpoint_every=5"])


@pytest.mark.slow
@pytest.mark.parametrize("mixer", ["hybrid", *NEW])
def test_slow_mixer_meshes_match_one_device(tmp_path, mixer):
    """The MRA hybrid (its three mixers are each checked on every mesh above) on every mesh; GLA, Gated DeltaNet
    and Based on data=8 and fsdp=8."""
    _check(tmp_path, {mixer: list(MESHES) if mixer == "hybrid" else ["data8", "fsdp8"]},
           extra=["train.checkpoint_every=5"])


def test_layout_rules():
    mesh_sizes = {"data": 2, "fsdp": 2, "tensor": 2}
    spec = lambda path, shape: sharding.spec_for(sharding.logical_axes(path, len(shape)), shape, mesh_sizes)
    assert spec(["embed", "embedding"], (259, 32)) == sharding.P(None, "fsdp")  # 259 is odd: vocab replicated
    assert spec(["blocks", "0", "mixer", "proj", "q", "kernel"], (32, 32)) == sharding.P("fsdp", "tensor")
    assert spec(["blocks", "0", "mixer", "proj", "o", "kernel"], (32, 32)) == sharding.P("tensor", "fsdp")
    assert spec(["blocks", "0", "mlp", "down", "kernel"], (96, 32)) == sharding.P("tensor", "fsdp")
    assert spec(["blocks", "0", "norm1", "scale"], (32,)) == sharding.P(None)
    assert spec(["blocks", "0", "mixer", "in_proj", "kernel"], (32, 194)) == sharding.P("fsdp", "tensor")
    assert spec(["blocks", "0", "mixer", "in_proj", "kernel"], (32, 195)) == sharding.P("fsdp", None)
    assert spec(["blocks", "0", "mixer", "out_gate", "kernel"], (32, 32)) == sharding.P("fsdp", "tensor")
    assert spec(["blocks", "0", "mixer", "o", "kernel"], (32, 32)) == sharding.P("tensor", "fsdp")  # Based's o
    assert spec(["blocks", "0", "mixer", "conv_w"], (4, 96)) == sharding.P(None, None)


@pytest.mark.parametrize("mesh, match", [
    ({"data": -1, "fsdp": -1}, r"^train.mesh: -1 for data, fsdp; at most one axis"),
    ({"pipeline": 2}, r"^train.mesh: unknown axis 'pipeline'; axes are data, fsdp, tensor$"),
    ({"data": 0}, r"^train.mesh.data = 0: must be an integer >= 1, or -1"),
    ("data", r"^train.mesh = 'data': must be None or a mapping"),
])
def test_bad_mesh_is_one_line(mesh, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(str(ROOT / "configs/models/transformer_tiny.py"), [f"train.mesh={mesh!r}"])


def test_mesh_must_cover_the_devices():
    assert sharding.mesh_shape(None, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert sharding.mesh_shape({"fsdp": -1, "tensor": 2}, 8) == {"data": 1, "fsdp": 4, "tensor": 2}
    with pytest.raises(sharding.MeshError, match=r"4 devices, but there are 8"):
        sharding.mesh_shape({"data": 2, "tensor": 2}, 8)
    with pytest.raises(sharding.MeshError, match=r"do not divide the 8 devices"):
        sharding.mesh_shape({"data": -1, "tensor": 3}, 8)


DECODE_SCRIPT = """
import json, sys
import jax, numpy as np
from flax import nnx
from scaling import config, sharding
from scaling.models import build
path, sets = json.loads(sys.argv[1])
model = build(config.load(path, sets).model, seed=0)
graphdef, params = nnx.split(model)
tokens = np.random.default_rng(0).integers(0, 256, (8, 12)).astype(np.int32)
prefill = jax.jit(lambda p, s, x: nnx.merge(graphdef, p).prefill(x, s))
step = jax.jit(lambda p, s, x: nnx.merge(graphdef, p).step(x, s))

def decode(params, state):
    logits, state = prefill(params, state, tokens[:, :8])
    out = [np.asarray(logits)]
    for t in range(8, 12):
        logits, state = step(params, state, tokens[:, t])
        out.append(np.asarray(logits)[:, None])
    return np.concatenate(out, 1), state

ref, _ = decode(params, model.init_state(8, 12))
mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
state = model.init_state(8, 12)
layout = sharding.decode_state_shardings(state, mesh)
got, end = decode(jax.device_put(params, sharding.state_shardings(params, mesh)), jax.device_put(state, layout))
specs = {jax.tree_util.keystr(p): str(s.spec) for p, s in jax.tree_util.tree_flatten_with_path(layout)[0]}
print(json.dumps({"err": float(np.abs(got - ref).max()), "scale": float(np.abs(ref).max()), "specs": specs}))
"""


def test_decode_state_is_sharded_by_the_same_rules_and_decodes_as_one_device():
    """Prefill 8 tokens and decode 4 through attention's KV cache, retention's and Mamba-2's states (the hybrid MRA)
    with parameters and decode state sharded on data=2 x fsdp=2 x tensor=2: the one-device logits."""
    preset, sets = MODELS["hybrid"]
    env = devices_env(8)
    proc = subprocess.run([sys.executable, "-c", DECODE_SCRIPT,
                           json.dumps([str(ROOT / f"configs/models/{preset}.py"), COMMON + sets])],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["err"] <= 1e-5 * max(out["scale"], 1.0), out
    specs = out["specs"]
    batch, heads = "('data', 'fsdp')", "'tensor'"
    kinds = {"k": 0, "S": 0, "ssm": 0, "conv": 0}
    for path, spec in specs.items():
        leaf = path.rsplit(".", 1)[-1]
        if leaf in kinds:
            kinds[leaf] += 1
            assert spec.startswith(f"P({batch}"), (path, spec)
            assert leaf == "conv" or heads in spec, (path, spec)  # 2 heads over tensor = 2
    assert all(kinds.values()), kinds  # every kind of state was there
    assert specs["['pos']"] == "P()"
