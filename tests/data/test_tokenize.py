"""scaling tokenize: text dir / jsonl / txt -> a token file that data.source='tokens' reads as the same documents."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.data import make_train_iterator
from scaling.data.corpus import load_corpus, token_documents
from scaling.data.sources import text_dir_documents
from scaling.data.tokenize import tokenize
from scaling.data.tokenizer import BOS, EOS

ROOT = Path(__file__).parents[2]
TEXTS = {"a.txt": "def f(x):\n    return x * 2\n", "sub/b.txt": "héllo wörld ✓\n" * 40, "c.txt": "",
         "sub/d.txt": "import os\n" * 300}


@pytest.fixture
def text_dir(tmp_path):
    root = tmp_path / "texts"
    for name, text in TEXTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def _docs(docs):
    return [np.asarray(d.ids, np.int64).tolist() for d in docs]


@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_text_dir_round_trip(text_dir, tmp_path, suffix):
    out = tmp_path / f"corpus{suffix}"
    seen = []
    res = tokenize(text_dir, out, progress=lambda done, total: seen.append((done, total)))
    want = _docs(text_dir_documents(text_dir))
    assert res.documents == len(want) == 3 and res.format == "text_dir"  # the empty file is skipped
    assert res.tokens == sum(map(len, want)) + 2 * len(want)
    assert seen[-1][0] == seen[-1][1] == sum(len(t.encode()) for t in TEXTS.values())
    assert _docs(token_documents(out)) == want  # the tokens source reads the same documents, in order
    raw = np.load(out) if suffix == ".npy" else np.fromfile(out, np.uint16)
    assert raw.dtype == np.uint16 and raw.size == res.tokens and raw[0] == BOS and raw[-1] == EOS
    corpus = load_corpus({"source": "tokens", "path": str(out), "val_fraction": 0.8})
    assert sorted(_docs(corpus.train + corpus.validation)) == sorted(want)
    batch = next(make_train_iterator({"source": "tokens", "path": str(out), "val_fraction": 0.8}, batch_size=2,
                                     context=16, seed=0))
    assert batch["inputs"].shape == (2, 16)


def test_jsonl_and_txt(tmp_path):
    lines = [{"text": "first doc"}, {"text": "second ✓"}, {"text": ""}, {"text": "third"}]
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n", encoding="utf-8")
    out = tokenize(src, tmp_path / "j.bin").out
    assert [bytes(d).decode() for d in _docs(token_documents(out))] == ["first doc", "second ✓", "third"]

    big = tmp_path / "one.txt"
    big.write_bytes(bytes(range(256)) * 10)
    res = tokenize(big, tmp_path / "t.bin", dtype="uint32")
    (doc,) = token_documents(res.out, "uint32")
    assert res.documents == 1 and doc.ids.tolist() == list(range(256)) * 10


def test_streaming_splits_a_large_text_file(tmp_path, monkeypatch):
    """A single text file is read in chunks and still comes out as one document."""
    from scaling.data import tokenize as tk

    monkeypatch.setattr(tk, "_CHUNK", 7)
    big = tmp_path / "one.txt"
    big.write_text("abcdefghij" * 5)
    (doc,) = token_documents(tokenize(big, tmp_path / "t.bin").out)
    assert bytes(doc.ids.astype(np.uint8)) == b"abcdefghij" * 5


def test_bad_input_is_a_clear_error(tmp_path, text_dir):
    with pytest.raises(ValueError, match="--out .* must end in one of .npy, .bin"):
        tokenize(text_dir, tmp_path / "x.txt")
    with pytest.raises(ValueError, match="--format 'csv'"):
        tokenize(text_dir, tmp_path / "x.bin", fmt="csv")
    with pytest.raises(FileNotFoundError, match="no such file"):
        tokenize(tmp_path / "missing", tmp_path / "x.bin")
    with pytest.raises(ValueError, match="no non-empty document"):
        tokenize(text_dir, tmp_path / "x.bin", glob="*.md")
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob(".*tmp"))


def test_cli(tmp_path, text_dir):
    out = subprocess.run([sys.executable, "-m", "scaling.cli", "tokenize", str(text_dir), "--out",
                          str(tmp_path / "c.bin"), "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "3 documents (text_dir)" in out.stdout and "data.source=tokens" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "scaling.cli", "tokenize", str(text_dir), "--out",
                          str(tmp_path / "c.csv"), "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "must end in one of" in bad.stderr
