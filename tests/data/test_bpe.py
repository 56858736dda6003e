"""Real tokenizers: a byte-level BPE trained here, token files with metadata, nanoGPT-style raw files, bits per byte
across tokenizers, and one-line errors for bad input."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling import config
from scaling.data import config as data_config
from scaling.data import corpus, pipeline, reference
from scaling.data.bpe import load_tokenizer, train_bpe
from scaling.data.sources import corpus_pieces
from scaling.data.tokenize import tokenize
from scaling.data.tokens import bpb_basis, meta_path, read_metadata

ROOT = Path(__file__).parents[2]
TINY_MODEL = str(ROOT / "configs/models/transformer_tiny.py")
TINY = ["model.d_model=32", "model.n_layers=1", "model.attention.n_heads=2", "model.attention.n_kv_heads=2",
        "train.batch_size=2", "train.context=32", "train.steps=3", "train.warmup_steps=1", "train.log_every=1",
        "train.eval_every=3", "train.checkpoint_every=3", "data.eval_tokens=128"]
SLICE = 60_000  # bytes of the embedded corpus (the stdlib) the tests train and tokenize on
EOT = 50256


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    info = train_bpe("stdlib", out, vocab_size=512, max_bytes=SLICE)
    return info


def _source_texts(max_bytes=SLICE):
    return [piece for _, piece, _, _ in corpus_pieces("stdlib", max_bytes=max_bytes)]


def test_train_bpe_is_deterministic(bpe, tmp_path):
    again = train_bpe("stdlib", tmp_path, vocab_size=512, max_bytes=SLICE)
    assert again["sha256"] == bpe["sha256"]
    assert (tmp_path / "tokenizer.json").read_bytes() == bpe["out"].read_bytes()
    assert bpe["vocab_size"] == 512 and bpe["documents"] >= 1 and bpe["bytes"] >= SLICE
    tok = load_tokenizer(bpe["out"])
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 512)


@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_tokenize_with_bpe_reads_back_the_documents(bpe, tmp_path, suffix):
    out = tmp_path / f"c{suffix}"
    res = tokenize("stdlib", out, tokenizer=str(bpe["out"]), max_bytes=SLICE)
    meta = read_metadata(out)
    texts = _source_texts()
    assert meta["tokenizer_sha256"] == bpe["sha256"] and meta["vocab_size"] == 512
    assert (meta["bos_id"], meta["eos_id"], meta["pad_id"], meta["dtype"]) == (1, 2, 0, "uint16")
    assert meta["documents"] == res.documents == len(texts) and meta["tokens"] == res.tokens
    assert meta["bytes"] == sum(len(t) for t in texts) and meta["max_id"] <= 511
    assert res.tokens < 0.7 * meta["bytes"]  # BPE merges: fewer tokens than bytes
    tok = load_tokenizer(bpe["out"])
    docs = list(corpus.token_documents(out))
    assert [tok.tok.decode(d.ids.tolist()) for d in docs] == [t.decode("utf-8") for t in texts]
    data = {"source": "tokens", "path": str(out), "val_fraction": 0.3, "packing": True}
    c = corpus.load_corpus(data)
    assert c.specials == (1, 2, 0)
    batch = next(pipeline.make_train_iterator(data, batch_size=2, context=64, seed=0))
    assert batch["inputs"].max() < 512
    table = bpb_basis(data_config.validate_data_config(data))  # a byte-level BPE: the bytes of each id
    assert table.shape == (512,) and table[:3].tolist() == [0, 0, 0] and (table[3:] >= 1).all()
    assert sum(int(table[d.ids].sum()) for d in docs) == meta["bytes"]  # exactly the bytes of the text
    with pytest.raises(config.ConfigError, match=r"^model.vocab_size = 259: smaller than the largest token id "
                       rf"{meta['max_id']} of data.path = .*; must be >= {meta['max_id'] + 1}; its tokenizer has 512"):
        config.load(TINY_MODEL, TINY + ["data.source=tokens", f"data.path={out}"])
    config.load(TINY_MODEL, TINY + ["data.source=tokens", f"data.path={out}", "model.vocab_size=512"])


def test_special_strings_inside_a_document_are_text(bpe, tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in ["a <|eos|> b", "<|bos|><|pad|>", "plain"]))
    out = tokenize(src, tmp_path / "s.bin", tokenizer=str(bpe["out"])).out
    tok = load_tokenizer(bpe["out"])
    assert [tok.tok.decode(d.ids.tolist()) for d in corpus.token_documents(out)] == \
        ["a <|eos|> b", "<|bos|><|pad|>", "plain"]


def test_a_tokenizer_without_bos_or_pad(tmp_path):
    """GPT-2's layout: one special, <|endoftext|>, after every document; no BOS, windows padded with it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world, hello tokens"] * 20, trainer=trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    src = tmp_path / "d.jsonl"
    texts = ["hello world", "tokens, hello", "x"]
    src.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    out = tokenize(src, tmp_path / "g.npy", tokenizer=str(tmp_path)).out  # a directory holding tokenizer.json
    meta = read_metadata(out)
    assert (meta["bos_id"], meta["eos_id"], meta["pad_id"], meta["documents"]) == (None, 0, None, 3)
    ids = np.load(out)
    assert (ids == 0).sum() == 3 and ids[-1] == 0 and ids[0] != 0
    f = sorted(corpus.hash_fraction(f"doc:{i}") for i in range(3))
    data = {"source": "tokens", "path": str(out), "val_fraction": (f[0] + f[1]) / 2}  # one validation document
    assert corpus.load_corpus(data).specials == (None, 0, 0)
    assert [tok.decode(d.ids.tolist()) for d in corpus.token_documents(out)] == texts
    with pytest.raises(ValueError, match=r"data.eos_id = 7: .*says the documents end with eos_id 0"):
        corpus.load_corpus({**data, "eos_id": 7})


def _nanogpt_file(tmp_path, n_docs=40, seed=0):
    """nanoGPT's convention: uint16 GPT-2 ids, each document followed by EOT (50256); ids 256-258 are ordinary."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, EOT, rng.integers(20, 90)).astype(np.uint16) for _ in range(n_docs)]
    docs[0][:3] = [256, 257, 258]  # the byte tokenizer's specials mean nothing here
    docs[1][-1] = EOT - 1
    path = tmp_path / "train.bin"
    np.concatenate([np.append(d, EOT) for d in docs]).astype(np.uint16).tofile(path)
    return path, docs


def test_nanogpt_file_yields_its_documents_and_trains(tmp_path, capsys):
    from scaling.train import train

    path, docs = _nanogpt_file(tmp_path)
    data = {"source": "tokens", "path": str(path), "eos_id": EOT, "val_fraction": 0.25}
    c = corpus.load_corpus(data)
    assert c.specials == (None, EOT, EOT)
    got = sorted((d.key, d.ids.tolist()) for d in c.train + c.validation)
    assert got == sorted((f"doc:{i}", d.tolist()) for i, d in enumerate(docs))
    assert bpb_basis(data_config.validate_data_config(data)) is None
    from scaling.cli import main

    sets = [a for e in ["data.source=tokens", f"data.path={path}", f"data.eos_id={EOT}", "data.val_fraction=0.25",
                        "model.vocab_size=50257"] for a in ("--set", e)]
    assert main(["data", TINY_MODEL, *sets, "--json"]) == 0  # exactly the file's documents and tokens
    s = json.loads(capsys.readouterr().out)
    assert (s["tokenizer"], s["vocab_size"], s["specials"]) == (None, None, {"bos": None, "eos": EOT, "pad": EOT})
    assert s["train"]["documents"] + s["validation"]["documents"] == len(docs)
    assert s["train"]["tokens"] + s["validation"]["tokens"] == sum(len(d) + 1 for d in docs)
    assert s["train"]["bytes"] is None and s["packing"] is True
    npy = tmp_path / "train.npy"  # the same ids as a raw .npy of another dtype: the same documents
    np.save(npy, np.fromfile(path, np.uint16).astype(np.int32))
    assert [d.ids.tolist() for d in corpus.token_documents(npy, eos_id=EOT)] == [d.tolist() for d in docs]
    # the windows hold documents as [ids..., EOT], no BOS, padded with EOT (loss_mask 0)
    val = [d.ids for d in c.validation]
    for packing, windows in ((False, reference.unpacked_windows_reference),
                               (True, reference.packed_windows_reference)):
        ref = windows(val, 32, specials=(None, EOT, EOT))
        rows = pipeline.make_eval_batches({**data, "eval_tokens": 10**6, "packing": packing}, batch_size=1,
                                          context=32)
        for key in pipeline.BATCH_KEYS:
            assert np.array_equal(np.concatenate([b[key] for b in rows]), ref[key]), (packing, key)

    with pytest.raises(config.ConfigError, match=r"model.vocab_size = 259: .*largest token id 50256"):
        config.load(TINY_MODEL, TINY + ["data.source=tokens", f"data.path={path}", f"data.eos_id={EOT}"])
    cfg = config.load(TINY_MODEL, TINY + ["data.source=tokens", f"data.path={path}", f"data.eos_id={EOT}",
                                          "model.vocab_size=50257", "data.val_fraction=0.25"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.status == "done" and math.isfinite(result.summary["val_loss"])
    assert result.summary["val_bpb"] is None  # no byte counts: unavailable, not wrong
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_bpb"] for r in evals if r["kind"] == "eval"] == [None]


def test_bits_per_byte_across_tokenizers(bpe, tmp_path):
    from scaling.train import LN2, evaluate

    byte_file = tokenize("stdlib", tmp_path / "b.bin", max_bytes=SLICE).out
    bpe_file = tokenize("stdlib", tmp_path / "p.bin", tokenizer=str(bpe["out"]), max_bytes=SLICE).out
    basis = {name: bpb_basis(data_config.validate_data_config({"source": "tokens", "path": str(p)}))
             for name, p in (("bytes", byte_file), ("bpe", bpe_file))}
    assert basis["bytes"] == "bytes" and bpb_basis(data_config.validate_data_config({})) == "bytes"
    meta = read_metadata(bpe_file)
    loss_sum, count, n_bytes = np.array([30.0, 50.0]), np.array([10.0, 20.0]), np.array([8.0, 18.0])
    rows = [loss_sum, count, n_bytes, np.zeros(2)]
    step = lambda params, b: rows
    batch = {"targets": np.array([[5, 300, 2], [7, 7, 1]]), "loss_mask": np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])}
    assert evaluate(step, None, [batch], lambda b: b)["val_bpb"] == pytest.approx(80 / 26 / LN2)
    # a byte-level BPE's file: the loss over the bytes of the (masked-in) targets, counted exactly
    exact = float(basis["bpe"][[5, 300, 2, 7]].sum())
    got = evaluate(step, None, [batch], lambda b: b, bpb=basis["bpe"])["val_bpb"]
    assert got == pytest.approx(80 / exact / LN2)
    # a tokenizer whose tokens' bytes are not fixed: the file's average tokens per byte
    ratio = meta["tokens"] / meta["bytes"]
    got = evaluate(step, None, [batch], lambda b: b, bpb=ratio)["val_bpb"]
    assert got == pytest.approx(80 / 30 * ratio / LN2)
    assert evaluate(step, None, [batch], lambda b: b, bpb=None)["val_bpb"] is None


# ----------------------------------------------------------------------------------------------------------
# the command line: progress, outputs, and one-line errors


def _cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "scaling.cli", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs):
    return {k: (p.wait(timeout=120), *p.communicate()) for k, p in procs.items()}


def test_cli_tokenizer_train_and_tokenize(tmp_path):
    out = _wait({"t": _cli("tokenizer", "train", "stdlib", "--vocab-size", 300, "--max-bytes", 20_000, "--out",
                           tmp_path / "tok", "--no-progress")})["t"]
    assert out[0] == 0 and "byte-level BPE of 300 tokens" in out[1], out
    res = _wait({"k": _cli("tokenize", "stdlib", "--tokenizer", tmp_path / "tok" / "tokenizer.json", "--max-bytes",
                           20_000, "--out", tmp_path / "c.bin", "--no-progress")})["k"]
    assert res[0] == 0 and "MB/s" in res[1] and "model.vocab_size" in res[1], res
    assert read_metadata(tmp_path / "c.bin")["vocab_size"] == 300


@pytest.fixture
def bad_files(bpe, tmp_path):
    tokenize("stdlib", tmp_path / "bpe.bin", tokenizer=str(bpe["out"]), max_bytes=SLICE)
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "raw.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "text.npy").write_text("this is not an array\n")
    np.save(tmp_path / "cut.npy", np.arange(1000, dtype=np.uint16))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:300])  # unreadable: truncated
    (tmp_path / "bad.json").write_text('{"model": "not a tokenizer"')
    return tmp_path


def _one_line_error(proc, pattern):
    rc, _, stderr = _wait({"p": proc})["p"]
    lines = stderr.strip().splitlines()
    assert rc == 2 and "Traceback" not in stderr and len(lines) == 1, stderr
    assert re.search(pattern, lines[0]), lines[0]


TRAIN_ERRORS = {  # file, extra overrides, the error line
    "id over the vocabulary": ("bpe.bin", [], r"^error: model.vocab_size = 259: smaller than the largest "
                               r"token id 5\d\d of data.path = '.*bpe.bin'; must be >= 5\d\d"),
    "missing metadata": ("raw.bin", [], r"no metadata file '.*raw.bin.meta.json'.*data.eos_id=50256"),
    "empty .bin": ("empty.bin", ["data.eos_id=0"], r"data.path = '.*empty.bin': the file is empty"),
    "text file named .npy": ("text.npy", ["data.eos_id=0"], r"text.npy': not a readable .npy array \(no NumPy"),
    "unreadable .npy": ("cut.npy", ["data.eos_id=0"], r"cut.npy': not a readable .npy array"),
}


@pytest.mark.parametrize("case", list(TRAIN_ERRORS))
def test_cli_train_bad_token_file_is_one_line(bad_files, case):
    name, extra, pattern = TRAIN_ERRORS[case]
    sets = [a for e in ["data.source=tokens", f"data.path={bad_files / name}", *extra] for a in ("--set", e)]
    _one_line_error(_cli("train", TINY_MODEL, *sets, "--workdir", bad_files / "run", "--no-progress"), pattern)
    assert not (bad_files / "run").exists()  # refused before anything is written


def test_cli_tokenizer_errors_are_one_line(bad_files):
    d = bad_files
    _one_line_error(_cli("tokenize", "stdlib", "--tokenizer", d / "bad.json", "--out", d / "x.bin", "--no-progress"),
                    r"^error: --tokenizer '.*bad.json': not a tokenizer.json the Hugging Face tokenizers library")
    _one_line_error(_cli("tokenize", "stdlib", "--tokenizer", d / "nope.json", "--out", d / "x.bin"),
                    r"--tokenizer '.*nope.json': no such file")
    _one_line_error(_cli("tokenize", d / "empty.bin", "--format", "txt", "--out", d / "x.bin", "--no-progress"),
                    r"^error: input '.*empty.bin': no non-empty document")
    _one_line_error(_cli("tokenizer", "train", "stdlib", "--vocab-size", 100, "--out", d / "t2", "--no-progress"),
                    r"^error: --vocab-size 100: must be an integer in \[259, ")
    assert not (d / "x.bin").exists() and not meta_path(d / "x.bin").exists() and not (d / "t2").exists()
    assert not list(d.glob(".*tmp"))
