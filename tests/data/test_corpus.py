import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from scaling.data import config as data_config
from scaling.data import corpus, sources
from scaling.data.tokenizer import BOS, EOS
from scaling.data.tokens import byte_metadata, write_metadata


def _save_bytes_npy(p, ids):
    """A .npy of byte-tokenizer ids with its metadata, as scaling tokenize writes them."""
    np.save(p, ids)
    write_metadata(p, byte_metadata(ids))

CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "data" / "stdlib.py"


def _preset():
    spec = importlib.util.spec_from_file_location("_data_stdlib_preset", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _val_fraction_for(keys, n_val):
    """A val_fraction that puts exactly the n_val keys of smallest hash into validation."""
    f = sorted(corpus.hash_fraction(k) for k in keys)
    return (f[n_val - 1] + f[n_val]) / 2


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


# ----------------------------------------------------------------------------------------------------------
# config


def test_preset_matches_defaults_and_validates():
    cfg = _preset()
    assert cfg.data.to_dict() == data_config.DATA_DEFAULTS
    resolved = data_config.validate_data_config(cfg.data)
    assert resolved == {**data_config.DATA_DEFAULTS, "packing": False}  # None: the stdlib's default, unpacked
    assert data_config.validate_data_config({}) == resolved  # missing fields take the defaults
    with pytest.raises(ValueError, match="pass cfg.data"):
        data_config.validate_data_config(cfg)


def test_packing_defaults_by_source_and_run_ids_keep(tmp_path):
    """packing None resolves per source (tokens, jsonl, parquet packed); a run id hashes the resolved value, so a
    config written with the explicit value (as every run before the None default) keeps its id."""
    from scaling import config as run_config
    from scaling.rundir import run_id

    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "x"}\n')
    assert data_config.validate_data_config({"source": "jsonl", "path": str(f)})["packing"] is True
    assert data_config.validate_data_config({"source": "text_dir", "path": str(tmp_path)})["packing"] is False
    assert data_config.validate_data_config({"source": "jsonl", "path": str(f), "packing": False})["packing"] is False
    cfg = run_config.default_config()
    explicit = run_config.default_config()
    explicit.data.packing = False
    assert cfg.data.packing is None and run_id(cfg) == run_id(explicit)
    explicit.data.packing = True
    assert run_id(cfg) != run_id(explicit)


@pytest.mark.parametrize(
    "override, match",
    [
        ({"source": "foo"}, r"^data.source = 'foo': must be one of stdlib, text_dir, jsonl, parquet, tokens "
                            r"\(corpora\) or "
                                r"mqar, selective_copy, induction, needle \(synthetic tasks, "
                                r"scaling.data.synthetic\)$"),
        ({"path": "/x"}, r"data.path = '/x': must be None for source 'stdlib'"),
        ({"source": "jsonl"}, r"data.path = None: required for source 'jsonl'"),
        ({"source": "text_dir", "path": ""}, r"data.path = '': required for source 'text_dir'"),
        ({"val_fraction": 0.0}, r"data.val_fraction = 0.0: must be a number in the open interval \(0, 1\)"),
        ({"val_fraction": 1}, r"data.val_fraction = 1: must be"),
        ({"val_fraction": True}, r"data.val_fraction = True: must be"),
        ({"token_dtype": "float32"}, r"data.token_dtype = 'float32': must be one of uint8, uint16"),
        ({"packing": 1}, r"data.packing = 1: must be True, False or None"),
        ({"eval_tokens": 0}, r"data.eval_tokens = 0: must be an integer >= 1"),
        ({"glob": ""}, r"data.glob = '': must be a non-empty string"),
        ({"text_field": None}, r"data.text_field = None: must be a non-empty string"),
        ({"shuffle": True}, r"data.shuffle: unknown field; accepted fields: source, path"),
    ],
)
def test_validate_rejects(override, match):
    with pytest.raises(ValueError, match=match):
        data_config.validate_data_config({**data_config.DATA_DEFAULTS, **override})


def test_validate_paths(tmp_path):
    missing = tmp_path / "nope"
    for source in ("text_dir", "jsonl", "tokens"):
        with pytest.raises(FileNotFoundError, match=r"data.path = '.*nope': no such file or directory"):
            data_config.validate_data_config({"source": source, "path": str(missing)})
    f = tmp_path / "a.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="data.path = .*: must be a directory for source 'text_dir'"):
        data_config.validate_data_config({"source": "text_dir", "path": str(f)})
    with pytest.raises(ValueError, match="data.path = .*: must be a file for source 'jsonl'"):
        data_config.validate_data_config({"source": "jsonl", "path": str(tmp_path)})
    with pytest.raises(ValueError, match=r"data.path = .*: must end in one of .npy, .bin"):
        data_config.validate_data_config({"source": "tokens", "path": str(f)})
    resolved = data_config.validate_data_config({"source": "text_dir", "path": str(tmp_path / "." / "")})
    assert resolved["path"] == str(tmp_path.resolve())


# ----------------------------------------------------------------------------------------------------------
# split


def test_hash_fraction_is_sha1():
    for key in ("json/decoder.py", "line:3", "doc:0", "ünïcode"):
        expected = int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) / 2**64
        assert corpus.hash_fraction(key) == expected
        assert 0.0 <= expected < 1.0
    assert corpus.is_validation("a", corpus.hash_fraction("a") + 1e-12)
    assert not corpus.is_validation("a", corpus.hash_fraction("a"))


# ----------------------------------------------------------------------------------------------------------
# text_dir


def test_text_dir(tmp_path):
    files = {f"d{i % 3}/f{i}.txt": f"document {i} ".encode() * (i + 1) for i in range(12)}
    files["skip.md"] = b"not matched"
    files["d0/empty.txt"] = b""
    _write(tmp_path, files)
    keys = sorted(k for k in files if k.endswith(".txt") and files[k])
    vf = _val_fraction_for(keys, 3)
    c = corpus.load_corpus({"source": "text_dir", "path": str(tmp_path), "val_fraction": vf})
    got = {d.key: d for d in c.train + c.validation}
    assert sorted(got) == keys  # recursive, .txt only, empty file skipped
    for key in keys:
        assert got[key].ids.dtype == np.uint8 and got[key].ids.tobytes() == files[key]
    assert [d.key for d in c.train] == sorted(d.key for d in c.train)
    assert len(c.validation) == 3 and all(corpus.is_validation(d.key, vf) for d in c.validation)
    assert not any(corpus.is_validation(d.key, vf) for d in c.train)

    assert [d.key for d in sources.text_dir_documents(tmp_path, "*.md")] == ["skip.md"]
    assert [d.key for d in sources.text_dir_documents(tmp_path, "d1/*.txt")] == ["d1/f1.txt", "d1/f10.txt",
                                                                                "d1/f4.txt", "d1/f7.txt"]


def test_text_dir_empty_corpus(tmp_path):
    msg = r"data.source = 'text_dir': empty corpus \(no non-empty files match"
    with pytest.raises(ValueError, match=msg):
        corpus.load_corpus({"source": "text_dir", "path": str(tmp_path)})
    _write(tmp_path, {"a.txt": b"", "b/c.txt": b""})
    with pytest.raises(ValueError, match="empty corpus"):
        corpus.load_corpus({"source": "text_dir", "path": str(tmp_path)})


def test_empty_splits_name_val_fraction(tmp_path):
    _write(tmp_path, {"only.txt": b"hello"})
    f = corpus.hash_fraction("only.txt")
    cfg = {"source": "text_dir", "path": str(tmp_path)}
    msg = r"data.val_fraction = .*: the validation split of the 1 document\(s\)"
    with pytest.raises(ValueError, match=msg):
        corpus.load_corpus({**cfg, "val_fraction": f / 2})
    with pytest.raises(ValueError, match=r"data.val_fraction = .*: the train split of the 1 document"):
        corpus.load_corpus({**cfg, "val_fraction": (f + 1) / 2})


# ----------------------------------------------------------------------------------------------------------
# jsonl


def test_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    records = [{"body": f"text {i} ü", "id": i} for i in range(10)]
    lines = [json.dumps(r) for r in records]
    lines.insert(4, "   ")  # blank line: skipped, but line numbers stay those of the file
    lines.append(json.dumps({"body": ""}))  # empty text: skipped
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    keys = [f"line:{n}" for n in (1, 2, 3, 4, 6, 7, 8, 9, 10, 11)]
    vf = _val_fraction_for(keys, 2)
    c = corpus.load_corpus({"source": "jsonl", "path": str(p), "text_field": "body", "val_fraction": vf})
    got = {d.key: d.ids.tobytes().decode("utf-8") for d in c.train + c.validation}
    assert got == {k: r["body"] for k, r in zip(keys, records, strict=True)}
    assert len(c.validation) == 2


@pytest.mark.parametrize(
    "content, match",
    [
        (
            '{"text": "a"}\n{"txt": "b"}\n',
            r"data.text_field = 'text': line 2 of .* has no such field \(it has: txt\)",
        ),
        ('{"text": "a"}\n[1, 2]\n', r"data.text_field = 'text': line 2 .* \(it has: list\)"),
        ('{"text": 3}\n', r"data.text_field = 'text': line 1 of .* holds a int; must be a string"),
        ('{"text": "a"}\n{bad json\n', r"data.path = .*: line 2 is not valid JSON"),
        ('\n\n{"text": ""}\n', r"data.source = 'jsonl': empty corpus \(no non-empty 'text' fields"),
    ],
)
def test_jsonl_errors(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        corpus.load_corpus({"source": "jsonl", "path": str(p)})


# ----------------------------------------------------------------------------------------------------------
# tokens


def test_tokens_npy_documents(tmp_path):
    docs = [np.arange(i + 1, dtype=np.int32) % 256 + i for i in range(8)]
    stream = []
    for i, d in enumerate(docs):
        stream += ([BOS] if i % 2 else []) + d.tolist() + [EOS]  # a leading BOS is optional
    stream += [EOS]  # an empty run: skipped
    p = tmp_path / "t.npy"
    _save_bytes_npy(p, np.array(stream, dtype=np.uint16))
    keys = [f"doc:{i}" for i in range(8)]
    vf = _val_fraction_for(keys, 2)
    c = corpus.load_corpus({"source": "tokens", "path": str(p), "val_fraction": vf})
    got = {d.key: d.ids.tolist() for d in c.train + c.validation}
    assert got == {k: d.tolist() for k, d in zip(keys, docs, strict=True)}
    assert len(c.validation) == 2


def test_tokens_bin_stream(tmp_path):
    ids = (np.arange(1000) * 7 % 256).astype(np.uint32)
    p = tmp_path / "t.bin"
    np.concatenate([[BOS], ids]).astype(np.uint32).tofile(p)
    write_metadata(p, byte_metadata(np.concatenate([[BOS], ids]).astype(np.uint32)))
    c = corpus.load_corpus({"source": "tokens", "path": str(p), "val_fraction": 0.1})
    (train,), (val,) = c.train, c.validation
    assert (train.key, val.key) == ("stream[0:900]", "stream[900:1000]")  # contiguous tail, BOS dropped
    assert np.array_equal(np.concatenate([train.ids, val.ids]), ids)
    # The same file read raw as uint16 (no metadata) is a different stream, so the cache must not mix them.
    q = tmp_path / "raw.bin"
    q.write_bytes(p.read_bytes())
    c16 = corpus.load_corpus({"source": "tokens", "path": str(q), "val_fraction": 0.1, "eos_id": 258})
    assert c16.train[0].ids.dtype == np.uint16 and c16.specials == (None, 258, 258)


def test_tokens_errors(tmp_path):
    p = tmp_path / "2d.npy"
    np.save(p, np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="must be a 1-D integer array"):
        corpus.load_corpus({"source": "tokens", "path": str(p), "eos_id": 1})
    p = tmp_path / "empty.bin"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="the file is empty"):
        corpus.load_corpus({"source": "tokens", "path": str(p), "eos_id": 1})
    p = tmp_path / "odd.bin"
    p.write_bytes(b"\x01\x00\x02")
    msg = "data.token_dtype = 'uint16': the size of .* is not a multiple of 2"
    with pytest.raises(ValueError, match=msg):
        corpus.load_corpus({"source": "tokens", "path": str(p), "eos_id": 1})
    with pytest.raises(ValueError, match=r"no metadata file .*odd.bin.meta.json.*set data.eos_id"):
        corpus.load_corpus({"source": "tokens", "path": str(p)})
    p = tmp_path / "eos.npy"
    _save_bytes_npy(p, np.array([BOS, EOS, EOS], np.uint16))
    with pytest.raises(ValueError, match=r"data.source = 'tokens': empty corpus \(no tokens besides BOS/EOS"):
        corpus.load_corpus({"source": "tokens", "path": str(p)})
    with pytest.raises(ValueError, match=r"data.eos_id = 5: only for source 'tokens'"):
        data_config.validate_data_config({"eos_id": 5})


# ----------------------------------------------------------------------------------------------------------
# stats


def test_corpus_stats(tmp_path):
    files = {"a.txt": b"aaaa", "b.txt": b"ab", "c.txt": b"abcabc", "d.txt": b"zz"}
    _write(tmp_path, files)
    vf = _val_fraction_for(list(files), 1)
    cfg = {"source": "text_dir", "path": str(tmp_path), "val_fraction": vf}
    c = corpus.load_corpus(cfg)
    stats = corpus.corpus_stats(cfg)
    train_bytes = b"".join(files[d.key] for d in c.train)
    val_bytes = b"".join(files[d.key] for d in c.validation)
    nt, nv = len(train_bytes), len(val_bytes)
    assert stats["train"] == {"n_documents": 3, "n_bytes": nt, "n_tokens": nt + 6}
    assert stats["validation"] == {"n_documents": 1, "n_bytes": nv, "n_tokens": nv + 2}
    counts = [train_bytes.count(bytes([b])) for b in set(train_bytes)]
    h = -sum(n / len(train_bytes) * math.log2(n / len(train_bytes)) for n in counts)
    assert stats["unigram_entropy_bits_per_byte"] == pytest.approx(h, rel=1e-12)
    assert stats["unigram_entropy_nats_per_byte"] == pytest.approx(h * math.log(2), rel=1e-12)


# ----------------------------------------------------------------------------------------------------------
# stdlib


def test_stdlib_split_stable_disjoint_and_cached():
    cfg = _preset().data
    c = corpus.load_corpus(cfg)
    assert corpus.load_corpus(cfg) is c  # cached in-process
    train, val = [d.key for d in c.train], [d.key for d in c.validation]
    assert len(train) > 100 and len(val) > 0
    assert not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert all(k.endswith(".py") and not k.startswith("/") for k in train + val)
    assert not any("site-packages" in k.split("/") for k in train + val)
    assert all(corpus.is_validation(k, 0.02) for k in val)
    assert not any(corpus.is_validation(k, 0.02) for k in train)
    assert 0.002 < len(val) / (len(train) + len(val)) < 0.08
    assert "os.py" in train + val and "json/decoder.py" in train + val
    # Re-reading from disk gives the same documents.
    corpus.load_corpus.cache_clear()
    again = corpus.load_corpus(cfg)
    assert again is not c
    assert [d.key for d in again.validation] == val
    assert all(np.array_equal(a.ids, b.ids) for a, b in zip(again.validation, c.validation, strict=True))
    doc = {d.key: d for d in again.train + again.validation}["os.py"]
    assert doc.ids.tobytes() == (sources.stdlib_root() / "os.py").read_bytes()
