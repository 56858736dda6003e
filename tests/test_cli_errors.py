"""Bad input on the command line: one line ``error: ...`` on stderr naming the file and line or the flag, exit
code 2, no traceback, before any compute, nothing written (scaling.cli.main in-process)."""

import re
from pathlib import Path

import pytest

from scaling import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/models/power_retention_tiny.py")

SYNTAX = "from ml_collections import ConfigDict\n\n\ndef get_config(:\n    return ConfigDict()\n"
AT_IMPORT = "import math\n\nX = undefined_name\n\n\ndef get_config():\n    return {}\n"
IN_GET_CONFIG = "def get_config():\n    x = 1\n    return x / 0\n"
SWEEP_SYNTAX = "def get_sweep()\n    return {}\n"
SWEEP_AT_IMPORT = "import os\n\nraise RuntimeError('no data here')\n"


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty working directory (the default workdirs runs/..., sweeps/... land here if anything is written)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(argv, capsys) -> str:
    """main(argv) must refuse with exit code 2 and one stderr line; that line."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", ["train", "flops"])
@pytest.mark.parametrize("text, line, what", [(SYNTAX, 4, "invalid syntax"),
                                              (AT_IMPORT, 3, "NameError: name 'undefined_name' is not defined"),
                                              (IN_GET_CONFIG, 3, "ZeroDivisionError: division by zero")])
def test_config_file_that_does_not_import_names_file_and_line(here, capsys, command, text, line, what):
    bad = _write(here / "bad.py", text)
    msg = _run([command, bad], capsys)
    assert msg == f"error: config file {str(bad)!r} line {line}: {what}"
    assert sorted(p.name for p in here.iterdir()) == ["bad.py"]  # no workdir, nothing compiled or written


@pytest.mark.parametrize("extra", [["--dry-run"], ["--sweep-dir", "sw"]])
@pytest.mark.parametrize("text, line, what", [(SWEEP_SYNTAX, 1, "expected ':'"),
                                              (SWEEP_AT_IMPORT, 3, "RuntimeError: no data here")])
def test_sweep_file_that_does_not_import_names_file_and_line(here, capsys, extra, text, line, what):
    bad = _write(here / "sweep.py", text)
    msg = _run(["sweep", bad, *extra], capsys)
    assert msg == f"error: sweep spec {str(bad)!r} line {line}: {what}"
    assert sorted(p.name for p in here.iterdir()) == ["sweep.py"]  # no sweep dir, no sweep.db


@pytest.mark.parametrize("value", ["-3", "0", "1.5", "abc"])
def test_flops_context_names_the_flag_and_the_range(here, capsys, value):
    msg = _run(["flops", TINY, "--context", "1024", value], capsys)
    assert re.fullmatch(rf"error: scaling flops: argument --context: '{re.escape(value)}': must be an integer >= 1 "
                        r"\(tokens\) \(see scaling flops -h\)", msg), msg


@pytest.mark.parametrize("argv, pattern", [
    (["--set", "train.context=-1"], r"error: train\.context = -1: must be an integer >= 1"),
    (["--set", "model.d_model=abc"], r"error: model\.d_model = 'abc': expected an int"),
    (["--set", "nonexistent.field=1"], r"error: nonexistent: unknown config section in override"),
    (["--set", "train.nope=1"], r"error: train\.nope: unknown field; known fields here: .*batch_size"),
    (["--set", "train.steps"], r"error: override 'train.steps': must look like key=value"),
])
def test_train_bad_override_is_one_line(here, capsys, argv, pattern):
    assert re.match(pattern, _run(["train", TINY, *argv, "--no-progress"], capsys))
    assert not list(here.iterdir())


def test_train_and_flops_bad_config_paths(here, capsys):
    (here / "adir").mkdir()
    _write(here / "c.json", "{}")
    assert _run(["train", here / "nope.py"], capsys) == f"error: config file {str(here / 'nope.py')!r} does not exist"
    assert "is a directory without config.json" in _run(["train", here / "adir"], capsys)
    assert _run(["flops", here / "adir"], capsys) == (f"error: config file {str(here / 'adir')!r} is a directory: "
                                                      "give a Python file with get_config()")
    assert "not a Python file (.py)" in _run(["flops", here / "c.json"], capsys)
    _write(here / "three.py", "def get_config():\n    return 3\n")
    assert "get_config() returned a value of type int" in _run(["flops", here / "three.py"], capsys)
    assert sorted(p.name for p in here.iterdir()) == ["adir", "c.json", "three.py"]
    assert not list((here / "adir").iterdir())


@pytest.mark.parametrize("flag, value, accepted", [("--max-tokens", "-1", "must be an integer >= 0"),
                                                   ("--temperature", "-0.5", "must be >= 0"),
                                                   ("--top-k", "-2", "must be an integer >= 0"),
                                                   ("--top-p", "0", "must be in (0, 1]"),
                                                   ("--top-p", "1.5", "must be in (0, 1]")])
def test_generate_sampling_flags_are_checked_before_the_run_is_loaded(here, capsys, flag, value, accepted):
    msg = _run(["generate", here / "no-such-run", flag, value], capsys)  # the flag, not the missing run
    assert msg.startswith(f"error: {flag} ") and accepted in msg, msg


def test_parser_errors_are_one_line(here, capsys):
    assert "invalid choice: 'fast'" in _run(["bench", "fast"], capsys)
    assert "the following arguments are required: config" in _run(["flops"], capsys)
    assert _run(["bench", "decode", "--tokens", "0", "--out", here / "b"], capsys).startswith(
        "error: scaling bench decode: --tokens = 0")
    assert not list(here.iterdir())
