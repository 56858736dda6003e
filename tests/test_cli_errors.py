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
    (["--set", "nonexistent.field=1"], r"error: nonexistent: unknown config section in override 'nonexistent.field'; "
                                      r"sections here: data, model, train$"),
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


def test_generate_state_files_are_checked_before_the_run_is_loaded(here, capsys):
    msg = _run(["generate", here / "no-such-run", "--load-state", here / "s.npz"], capsys)
    assert msg == f"error: --load-state {str(here / 's.npz')!r}: no such file (a state saved by --save-state)"
    msg = _run(["generate", here / "no-such-run", "--save-state", here / "nodir" / "s.npz"], capsys)
    assert msg == f"error: --save-state {str(here / 'nodir' / 's.npz')!r}: its directory does not exist"
    assert not list(here.iterdir())


def test_parser_errors_are_one_line(here, capsys):
    assert "invalid choice: 'fast'" in _run(["bench", "fast"], capsys)
    assert "the following arguments are required: config" in _run(["flops"], capsys)
    assert _run(["bench", "decode", "--tokens", "0", "--out", here / "b"], capsys).startswith(
        "error: scaling bench decode: --tokens = 0")
    assert not list(here.iterdir())


def test_bench_kernels_checks_its_flags_too(here, capsys):
    assert _run(["bench", "kernels", "--context", "0"], capsys).startswith(
        "error: scaling bench kernels: --context = 0: must be an integer >= 1")


def test_generate_prompt_file_missing_or_not_text(here, capsys):
    msg = _run(["generate", here / "no-such-run", "--prompt-file", here / "nope.txt"], capsys)
    assert msg == f"error: --prompt-file {str(here / 'nope.txt')!r}: No such file or directory (give a UTF-8 text file)"
    (here / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    assert "not UTF-8 text" in _run(["generate", here / "no-such-run", "--prompt-file", here / "bin.txt"], capsys)


@pytest.fixture(scope="module")
def bpe_tokens(tmp_path_factory):
    """A byte-level BPE (vocab 300) trained on a slice of the embedded corpus, and a token file made with it."""
    from scaling.data.bpe import train_bpe
    from scaling.data.tokenize import tokenize

    d = tmp_path_factory.mktemp("bpe")
    info = train_bpe("stdlib", d / "tok", vocab_size=300, max_bytes=20_000)
    tokenize("stdlib", d / "c.bin", tokenizer=str(info["out"]), max_bytes=20_000)
    return d, info


def _run_dir(path: Path, sets) -> Path:
    """A run workdir holding only config.json (no checkpoint): generate must refuse before it looks for one."""
    import json

    from scaling import config

    cfg = config.load(TINY, sets)
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    return path


def test_generate_refuses_a_tokenizer_it_cannot_find(here, capsys, bpe_tokens):
    d, info = bpe_tokens
    raw = d / "raw.bin"
    raw.write_bytes((d / "c.bin").read_bytes())  # the same ids, no metadata
    run = _run_dir(here / "raw-run", ["data.source=tokens", f"data.path={raw}", "data.eos_id=2",
                                      "model.vocab_size=300"])
    msg = _run(["generate", run], capsys)
    assert msg == (f"error: generate decodes byte ids, or with the tokenizer.json named in a token file's metadata; "
                   f"this run trained on data.path = {str(raw)!r}, a raw token file without metadata (tokenizer "
                   "unknown)")
    moved = d / "moved"
    moved.mkdir(exist_ok=True)
    for name in ("c.bin", "c.bin.meta.json"):
        (moved / name).write_bytes((d / name).read_bytes())
    run = _run_dir(here / "bpe-run", ["data.source=tokens", f"data.path={moved / 'c.bin'}", "model.vocab_size=300"])
    saved = info["out"].read_bytes()
    info["out"].unlink()
    try:
        msg = _run(["generate", run], capsys)
    finally:
        info["out"].write_bytes(saved)
    assert msg.startswith("error: generate decodes byte ids") and f"(tokenizer {str(info['out'])!r}, named in" in msg
    assert msg.endswith("and that file is not found")
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # no checkpoint read, nothing written


def test_generate_finds_the_tokenizer_named_in_the_metadata(here, bpe_tokens):
    from scaling.data.bpe import FileTokenizer

    d, info = bpe_tokens
    run = _run_dir(here / "bpe-run", ["data.source=tokens", f"data.path={d / 'c.bin'}", "model.vocab_size=300"])
    tok = cli._run_tokenizer(run)
    assert isinstance(tok, FileTokenizer) and tok.sha256 == info["sha256"]
    assert cli._run_tokenizer(_run_dir(here / "byte-run", [])) is None  # the byte tokenizer: the byte path


def test_train_on_a_corpus_too_small_to_split_is_one_line_before_the_workdir(here, capsys):
    from scaling.data.tokenize import tokenize

    (here / "one.txt").write_text("print('one document')\n")
    tokenize(here / "one.txt", here / "one.bin")
    msg = _run(["train", TINY, "--set", "data.source=tokens", "--set", f"data.path={here / 'one.bin'}",
                "--workdir", here / "run", "--no-progress"], capsys)
    assert msg.startswith("error: data.val_fraction = 0.02: the validation split of the 1 document(s) came out empty")
    assert not (here / "run").exists()
