"""The corpus formats corpora ship as: compressed JSONL and parquet, read by streaming, for training and for
``scaling tokenize`` (with its worker processes); one-line errors for bad files; ``scaling data``."""

import gzip
import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from scaling.data import corpus, sources
from scaling.data import tokenize as tk
from scaling.data.summary import data_summary, padding_fraction

TEXTS = ["first document\n", "", "second, with unicode: \u00e9\u4e2d\n", "x" * 300, "last"]


def _records(texts=TEXTS):
    return "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()


@pytest.fixture
def files(tmp_path):
    raw = _records()
    (tmp_path / "c.jsonl").write_bytes(raw)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    table = pa.table({"text": TEXTS[:3] + [None] + TEXTS[3:], "n": list(range(6))})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=2)
    (tmp_path / "shards").mkdir()
    pq.write_table(table.slice(0, 3), tmp_path / "shards" / "a.parquet")
    pq.write_table(table.slice(3), tmp_path / "shards" / "b.parquet")
    return tmp_path


def _val_fraction(docs):
    """A validation fraction that splits these documents into two non-empty parts (the split hashes the keys)."""
    h = sorted(corpus.hash_fraction(d.key) for d in docs)
    return (h[0] + h[-1]) / 2


def _texts(docs):
    return [d.ids.tobytes().decode() for d in docs]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.jsonl.zst"])
def test_compressed_jsonl_reads_as_plain(files, name):
    docs = list(sources.jsonl_documents(files / name))
    assert _texts(docs) == [t for t in TEXTS if t]
    assert [d.key for d in docs] == ["line:1", "line:3", "line:4", "line:5"]
    c = corpus.load_corpus({"source": "jsonl", "path": str(files / name), "val_fraction": _val_fraction(docs)})
    assert sorted(_texts(c.train + c.validation)) == sorted(t for t in TEXTS if t)


def test_parquet_file_and_directory(files):
    docs = list(sources.parquet_documents(files / "c.parquet"))
    assert _texts(docs) == [t for t in TEXTS if t]
    assert [d.key for d in docs] == ["row:0", "row:2", "row:4", "row:5"]  # empty and null rows skipped
    shards = list(sources.parquet_documents(files / "shards"))
    assert _texts(shards) == _texts(docs)
    assert [d.key for d in shards] == ["a.parquet:row:0", "a.parquet:row:2", "b.parquet:row:1", "b.parquet:row:2"]
    c = corpus.load_corpus({"source": "parquet", "path": str(files / "shards"), "val_fraction": _val_fraction(shards)})
    assert sorted(_texts(c.train + c.validation)) == sorted(_texts(docs))


def test_every_format_tokenizes_to_the_same_ids(files, tmp_path):
    ref = tk.tokenize(files / "c.jsonl", tmp_path / "ref.bin")
    for name in ("c.jsonl.gz", "c.jsonl.zst", "c.parquet", "shards"):
        res = tk.tokenize(files / name, tmp_path / f"{name}.bin")
        assert res.out.read_bytes() == ref.out.read_bytes(), name
        assert res.documents == ref.documents == 4 and res.text_bytes == ref.text_bytes
        assert res.format == ("parquet" if name in ("c.parquet", "shards") else "jsonl")
        assert res.input_bytes == sum(p.stat().st_size for p in ([files / name] if "." in name else
                                                                   (files / name).glob("*.parquet")))


def test_workers_write_the_same_file(tmp_path):
    """Encoding in two worker processes gives the file of one, byte for byte (documents in order)."""
    from scaling.data.bpe import train_bpe

    bpe = train_bpe("stdlib", tmp_path / "bpe", vocab_size=300, max_bytes=30_000)
    one = tk.tokenize("stdlib", tmp_path / "one.bin", tokenizer=str(bpe["out"]), max_bytes=200_000)
    two = tk.tokenize("stdlib", tmp_path / "two.bin", tokenizer=str(bpe["out"]), max_bytes=200_000, workers=2)
    assert one.out.read_bytes() == two.out.read_bytes() and one.documents == two.documents > 5
    assert json.loads(one.meta.read_text()) == json.loads(two.meta.read_text())
    with pytest.raises(ValueError, match=r"--workers 0: must be an integer in \[1, 256\]"):
        tk.tokenize("stdlib", tmp_path / "x.bin", workers=0)


def test_streaming_memory_is_flat(tmp_path, monkeypatch):
    """Tokenizing a compressed JSONL and a parquet file holds one batch at a time: the peak of Python allocations
    stays far below the corpus, and does not grow with it."""
    monkeypatch.setattr(tk, "_BATCH", 1 << 16)
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 64)
    rng = np.random.default_rng(0)

    def peak(path):
        tracemalloc.start()
        tk.tokenize(path, tmp_path / f"{path.name}.bin")
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    peaks = {}
    for n_docs in (400, 1600):
        texts = ["".join(rng.choice(list("abcdefgh \n"), size=2000)) for _ in range(n_docs)]
        zst = tmp_path / f"{n_docs}.jsonl.zst"
        zst.write_bytes(zstandard.ZstdCompressor().compress(_records(texts)))
        par = tmp_path / f"{n_docs}.parquet"
        pq.write_table(pa.table({"text": texts}), par, row_group_size=128)
        peaks[n_docs] = (peak(zst), peak(par))
    corpus_bytes = 1600 * 2000
    for kind in (0, 1):
        assert peaks[1600][kind] < corpus_bytes / 4, peaks
        assert peaks[1600][kind] < 2 * peaks[400][kind], peaks  # 4x the corpus, not 4x the memory


BAD = {  # file contents, data config, the error
    "missing column": ("c.parquet", {"text_field": "body"},
                       r"^data.text_field = 'body': parquet file '.*c.parquet' has no such column "
                       r"\(it has: text, n\)$"),
    "not a string column": ("c.parquet", {"text_field": "n"},
                            r"^data.text_field = 'n': column of parquet file .* holds int64; must be a string column$"),
    "text named .parquet": ("fake.parquet", {}, r"^data.path = '.*fake.parquet': not a readable parquet file"),
    "corrupt gzip": ("bad.jsonl.gz", {}, r"^data.path = '.*bad.jsonl.gz': unreadable compressed JSONL after line 0"),
    "corrupt zstd": ("bad.jsonl.zst", {}, r"^data.path = '.*bad.jsonl.zst': unreadable compressed JSONL"),
    "empty directory": ("empty", {}, r"^data.path = '.*empty': no \*.parquet files under this directory$"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_are_one_line(files, case):
    (files / "fake.parquet").write_text("hello")
    (files / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    (files / "bad.jsonl.zst").write_bytes(b"not zstd at all")
    (files / "empty").mkdir()
    name, extra, pattern = BAD[case]
    source = "jsonl" if "jsonl" in name else "parquet"
    with pytest.raises(ValueError, match=pattern) as e:
        corpus.load_corpus({"source": source, "path": str(files / name), **extra})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=pattern.replace("^data.path", "^input").replace("^data.text_field",
                                                                                          "^--text-field")):
        tk.tokenize(files / name, files / "out.bin", fmt=source, text_field=extra.get("text_field", "text"))
    assert not (files / "out.bin").exists() and not list(files.glob(".*tmp"))


def test_padding_fraction_counts_target_slots():
    # context 4: a document of 6 tokens (5 targets) needs 2 windows (8 slots): 3 padded; packing fills 11 tokens
    # into ceil(11 / 5) = 3 windows of 4 targets, 11 - 3 = 8 real: 4 padded of 12
    assert padding_fraction(np.array([6, 5]), 4, False) == pytest.approx(1 - 9 / 12)
    assert padding_fraction(np.array([6, 5]), 4, True) == pytest.approx(4 / 12)


def test_data_summary_of_a_jsonl_corpus(files):
    vf = _val_fraction(list(sources.jsonl_documents(files / "c.jsonl")))
    s = data_summary({"source": "jsonl", "path": str(files / "c.jsonl.zst"), "val_fraction": vf}, context=8)
    assert s["tokenizer"] == "bytes" and s["packing"] is True  # jsonl is packed by default
    assert s["train"]["documents"] + s["validation"]["documents"] == 4
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    assert s["train"]["bytes"] + s["validation"]["bytes"] == n_bytes
    assert s["train"]["tokens"] + s["validation"]["tokens"] == n_bytes + 2 * 4
    assert 0 <= s["padding"]["packed"] < s["padding"]["unpacked"] < 1
    json.dumps(s)  # JSON-safe
