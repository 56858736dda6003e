"""statescale's XLA CPU defaults: added once, never over a user's own choice, and not at all when turned off."""

from scaling.sweep.worker import worker_env
from scaling.xla_env import YNN_FLAG, with_cpu_defaults


def test_cpu_defaults_add_the_flag_once_and_yield_to_the_user():
    assert with_cpu_defaults({"XLA_FLAGS": ""})["XLA_FLAGS"] == YNN_FLAG
    once = with_cpu_defaults({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert once["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {YNN_FLAG}"
    assert with_cpu_defaults(once) == once
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=-dot"}
    assert with_cpu_defaults(mine) == mine
    assert "XLA_FLAGS" not in with_cpu_defaults({"STATESCALE_XLA_DEFAULTS": "0"})


def test_sweep_workers_get_the_defaults_and_their_thread_flag():
    env = worker_env(True, {"XLA_FLAGS": ""})
    assert env["XLA_FLAGS"].split() == [YNN_FLAG, "--xla_cpu_multi_thread_eigen=false"]
    assert worker_env(False, {})["XLA_FLAGS"] == YNN_FLAG
