"""``scaling convert WORKDIR --to R|G|B --out NEWDIR``: a new run directory holding a trained run converted.

The conversion itself (configs, parameters) is scaling.convert; this writes its result as a run that
``scaling train NEWDIR`` continues: config.json (the converted config, ``train.init_from`` = the source), a step-0
checkpoint and ``converted.json`` (what was converted from what).
"""

from __future__ import annotations

import json
from pathlib import Path

from flax import nnx

from scaling import config as _config
from scaling import rundir
from scaling.convert import TARGETS, ConversionError, convert_config, convert_params


def convert_run(workdir, out, to: str = "R", overrides=()) -> tuple:
    """Write ``out``: a run workdir whose model is ``workdir``'s newest checkpoint converted to ``to``.

    ``out`` gets config.json (the converted config, ``train.init_from`` = ``workdir``) and a step-0 checkpoint
    (converted parameters, a fresh optimizer state and data position), so ``scaling train out`` retrains it.
    Returns (cfg, source step). Everything is checked before ``out`` is written; ``out`` must not exist or
    be empty.
    """
    from scaling.checkpoint import Checkpointer, flat_tree
    from scaling.data import make_train_iterator
    from scaling.train import init_train_state, load_run

    workdir, out = Path(workdir).resolve(), Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"--out {str(out)!r}: exists and is not an empty directory; give a new one")
    if out == workdir:
        raise ConversionError("--out: must differ from the source workdir")
    src_cfg, src_model, step = load_run(workdir)  # FileNotFoundError: no config.json / no checkpoint
    cfg = convert_config(src_cfg, to, overrides)
    cfg.train.init_from = str(workdir)
    _config.validate(cfg)
    params = convert_params(src_cfg, nnx.state(src_model, nnx.Param), cfg)
    _, _, tx, _ = init_train_state(cfg)
    state = {"params": params, "opt": tx.init(params)}
    data_state = make_train_iterator(cfg.data, batch_size=cfg.train.batch_size, context=cfg.train.context,
                                     seed=cfg.train.seed).get_state()
    out.mkdir(parents=True, exist_ok=True)
    with Checkpointer(out / rundir.CHECKPOINTS, keep=cfg.train.keep_checkpoints) as ckpt:
        ckpt.save(0, flat_tree(state), data_state=data_state,
                  meta={"converted_from": str(workdir), "source_step": step, "to": to})
    rundir.write_config(out, rundir.run_id(cfg), _config.to_dict(cfg))
    (out / "converted.json").write_text(json.dumps(
        {"source": str(workdir), "source_step": step, "source_pattern": src_cfg.model.pattern,
         "pattern": cfg.model.pattern, "to": to, TARGETS[to].section: cfg.model[TARGETS[to].section].to_dict()},
        indent=2))
    return cfg, step
