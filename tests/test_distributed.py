"""Two processes joined by ``jax.distributed`` on localhost (CPU collectives over gloo), two devices each, train one
run with ``scaling train --coordinator --num-processes --process-id``: the loss curve is the one-process one, process
0 writes the run directory, every process writes its checkpoint shards, and the run resumes on one process and one
device from their checkpoint. Plus the one-line errors of the multi-host flags."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from scaling import sharding
from tests.helpers import devices_env
from tests.test_sharding import COMMON, MODELS, ROOT, _run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(workdir) -> list[float]:
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [x["loss"] for x in rows if x["kind"] == "train"] + [x["val_loss"] for x in rows if x["kind"] == "eval"]


@pytest.mark.long
def test_two_processes_give_the_one_process_loss_curve_and_resume_on_one(tmp_path):
    preset, sets = MODELS["hybrid"]  # attention, power retention and Mamba-2 in one model
    path = str(ROOT / f"configs/models/{preset}.py")
    ref = _run({"one": (path, COMMON + sets, str(tmp_path / "one"))}, 1)["one"]

    workdir, port = str(tmp_path / "two"), _free_port()
    env = devices_env(2)
    args = [sys.executable, "-m", "scaling.cli", "train", path, *[f"--set={s}" for s in COMMON + sets],
            "--set=train.mesh={'data': 2, 'fsdp': 2}", "--workdir", workdir, "--no-progress",
            "--coordinator", f"localhost:{port}", "--num-processes", "2"]
    procs = [subprocess.Popen([*args, "--process-id", str(i)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    np.testing.assert_allclose(_losses(workdir), ref, rtol=1e-5)
    status = json.loads(open(os.path.join(workdir, "status.json")).read())
    assert status["status"] == "done" and status["step"] == 5
    ckpts = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    assert [c for c in ckpts if c.isdigit()] == ["2", "4", "5"], ckpts

    shutil.rmtree(os.path.join(workdir, "checkpoints", "5"))  # as if killed after step 4: resume on one device
    resumed = _run({"resumed": (path, COMMON + sets, workdir)}, 1)["resumed"]
    np.testing.assert_allclose(resumed, ref, rtol=1e-5)


@pytest.mark.parametrize("flags, env, message", [
    ({"coordinator": "node0"}, {}, "--coordinator = 'node0': must be host:port of process 0"),
    ({"coordinator": "node0:1"}, {}, "multi-host: --num-processes, --process-id not set; give all three"),
    ({"coordinator": "a:1", "num_processes": 2, "process_id": 2}, {}, r"--process-id = 2: must be in \[0, 2\)"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, "--num-processes = 'two': must be an integer"),
])
def test_bad_host_flags_are_one_line(flags, env, message):
    with pytest.raises(sharding.MeshError, match=message):
        sharding.hosts_from(**flags, environ=env)


def test_hosts_come_from_flags_then_environment_then_slurm():
    assert sharding.hosts_from(environ={}) is None  # one process
    env = {"JAX_COORDINATOR_ADDRESS": "n0:9", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert sharding.hosts_from(environ=env) == {"coordinator_address": "n0:9", "num_processes": 4, "process_id": 3,
                                                "source": "flags or environment"}
    assert sharding.hosts_from(process_id=1, environ=env)["process_id"] == 1  # the flag wins
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8", "SLURM_PROCID": "5"}
    assert sharding.hosts_from(environ=slurm) == {"coordinator_address": None, "num_processes": None,
                                                  "process_id": None, "source": "slurm"}  # jax's Slurm detection
    assert sharding.hosts_from(environ={**slurm, "SLURM_NTASKS": "1"}) is None  # one task: one process
