"""Bytes or BPE at equal compute: a byte-level BPE of 8,192 tokens trained on the embedded corpus, the corpus
tokenized with it and with the byte tokenizer, and one tiny transformer trained on each for the same training FLOPs,
compared in bits per byte on the same validation documents.

    python -m experiments.tokenizer_bpb --out runs/tokenizer_bpb        # about 10 minutes on two cores

Steps (each skipped when its output exists, so a rerun resumes; the runs resume from their checkpoints):

1. ``scaling tokenizer train stdlib --vocab-size 8192``: the BPE, on the whole corpus (~31 MB).
2. ``scaling tokenize stdlib`` with the byte tokenizer and with the BPE, each with 1 and 2 worker processes, side by
   side (MB/s of input); the files of 1 and 2 workers are checked to be identical.
3. Two runs of the same transformer (d_model 64, 2 layers, 2 heads, context 256) at ``BUDGET`` training FLOPs
   (scaling.accounting: 3 x forward, the LM head included, so the BPE model's 8,192-way head costs it tokens), one on
   each token file. Both files hold the same documents in the same order, so the hash split (keys ``doc:<i>``) gives
   both the same validation documents, and ``data.eval_tokens`` covers the whole validation split of each.
   Bits per byte: the byte model's loss over its byte targets; the BPE model's loss per token x tokens per byte of
   its file (scaling.data.tokens.bpb_basis).

Output: ``results.json``, a table on stdout and ``bpb_vs_flops.png`` (validation bits per byte against training
FLOPs for both). One seed each: the seed-to-seed spread of these tiny runs is about 0.01-0.04 nats (quickstart), so
only a gap well beyond that is a finding.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scaling import accounting, config
from scaling.data.bpe import train_bpe
from scaling.data.tokenize import tokenize

VOCAB = 8192
BUDGET = 2.4e12  # training FLOPs of each run
CONTEXT = 256
MODEL = ["model.name=tokenizer_bpb", "model.pattern=A", "model.d_model=64", "model.n_layers=2",
         "model.attention.n_heads=2", "model.attention.n_kv_heads=2"]
RUN = [f"train.context={CONTEXT}", "train.warmup_steps=30", "train.lr=3e-3", "train.checkpoint_every=200",
       "train.log_every=50", "data.source=tokens", "data.val_fraction=0.02"]
BATCH = {"bytes": 16, "bpe": 8}  # rows per step: the BPE model's steps cost 3.5x more, so it takes fewer, smaller
EVAL_TOKENS = {"bytes": 620_000, "bpe": 200_000}  # the whole validation split of each file
ROOT = Path(__file__).resolve().parents[1]


def _tokenizer(out: Path) -> tuple[Path, dict]:
    tok = out / f"bpe{VOCAB}" / "tokenizer.json"
    if tok.exists():
        return tok, {"seconds": None}
    t0 = time.perf_counter()
    info = train_bpe("stdlib", tok.parent, vocab_size=VOCAB)
    info = {"seconds": time.perf_counter() - t0, "documents": info["documents"], "bytes": info["bytes"]}
    print(f"BPE of {VOCAB:,} tokens trained on {info['bytes']:,} bytes in {info['seconds']:.1f} s")
    return tok, info


def _tokenize(out: Path, name: str, tokenizer: str) -> tuple[Path, dict]:
    path = out / f"stdlib.{name}.bin"
    speeds = {}
    if not path.exists():
        files = {}
        for workers in (1, 2):
            target = out / f"stdlib.{name}.w{workers}.bin"
            t0 = time.perf_counter()
            res = tokenize("stdlib", target, tokenizer=tokenizer, workers=workers)
            wall = time.perf_counter() - t0
            speeds[workers] = {"seconds": wall, "mb_per_s": res.input_bytes / wall / 1e6, "tokens": res.tokens,
                               "input_bytes": res.input_bytes, "bytes_per_token": res.text_bytes / res.tokens}
            files[workers] = target
            print(f"tokenize stdlib ({name}, {workers} worker{'s' if workers > 1 else ''}): {res.tokens:,} tokens "
                  f"from {res.input_bytes:,} bytes in {wall:.1f} s ({speeds[workers]['mb_per_s']:.2f} MB/s)")
        same = files[1].read_bytes() == files[2].read_bytes()
        if not same:
            raise SystemExit(f"tokenize: 1 and 2 workers wrote different files for {name}")
        files[2].unlink()
        files[2].with_name(files[2].name + ".meta.json").unlink()
        files[1].rename(path)
        files[1].with_name(files[1].name + ".meta.json").rename(path.with_name(path.name + ".meta.json"))
    return path, speeds


def _run(out: Path, name: str, tokens: Path) -> dict:
    from scaling.train import train

    vocab = 259 if name == "bytes" else VOCAB
    sets = MODEL + RUN + [f"model.vocab_size={vocab}", f"data.path={tokens}", f"train.batch_size={BATCH[name]}",
                          f"data.eval_tokens={EVAL_TOKENS[name]}"]
    cfg = config.load(str(ROOT / "configs/models/transformer_tiny.py"), sets)
    fpt = accounting.train_flops_per_token(cfg, CONTEXT)
    steps = round(BUDGET / (fpt * BATCH[name] * CONTEXT))
    cfg = config.load(str(ROOT / "configs/models/transformer_tiny.py"),
                      sets + [f"train.steps={steps}", f"train.eval_every={max(steps // 6, 1)}"])
    t0 = time.perf_counter()
    result = train(cfg, out / f"run-{name}", progress=True)
    evals = [json.loads(line) for line in (out / f"run-{name}" / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"] * BATCH[name] * CONTEXT * fpt, r["val_bpb"]) for r in evals if r["kind"] == "eval"]
    n = accounting.params(cfg)
    return {"status": result.status, "steps": steps, "params": n["total"], "non_embedding_params": n["non_embedding"],
            "train_flops_per_token": fpt, "tokens": steps * BATCH[name] * CONTEXT,
            "val_loss": result.summary["val_loss"],
            "val_loss_se": result.summary["val_loss_se"], "val_bpb": result.summary["val_bpb"], "curve": curve,
            "seconds": time.perf_counter() - t0}


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["runs"].items():
        x, y = zip(*[(f, b) for f, b in r["curve"] if f > 0], strict=True)
        label = f"{name}: {r['params']:,} params, {r['tokens']:,} tokens"
        ax.plot(x, y, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation bits per byte")
    ax.set_title(f"bytes vs BPE-{VOCAB} at equal compute (d_model 64, 2 layers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/tokenizer_bpb", help="output directory (reruns resume)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok, bpe_info = _tokenizer(out)
    files, speeds = {}, {}
    for name, spec in (("bytes", "bytes"), ("bpe", str(tok))):
        files[name], speeds[name] = _tokenize(out, name, spec)
    results = {"budget": BUDGET, "context": CONTEXT, "bpe": bpe_info, "tokenize": speeds,
               "runs": {name: _run(out, name, files[name]) for name in files}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "bpb_vs_flops.png")
    print(f"\n{'tokenizer':<10}{'params':>10}{'steps':>7}{'tokens':>11}{'val loss':>18}{'val bpb':>9}")
    for name, r in results["runs"].items():
        print(f"{name:<10}{r['params']:>10,}{r['steps']:>7}{r['tokens']:>11,}{r['val_loss']:>11.3f} ± "
              f"{r['val_loss_se']:.3f}{r['val_bpb']:>9.3f}")
    print(f"(both at {BUDGET:.2g} training FLOPs; bits per byte on the same validation documents) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
