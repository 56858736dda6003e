"""Synthetic recall tasks: deterministic streams, answers exactly where the loss mask says (checked by decoding
each example independently of the generator), resumable iterators, held-out evaluation, validation errors."""

import json
import re

import numpy as np
import pytest

from scaling import config
from scaling.data import BATCH_KEYS, make_eval_batches, make_train_iterator, synthetic
from scaling.data.config import TASKS, task_params

SMALL = {
    "mqar": {"vocab_size": 32, "num_kv_pairs": 6},
    "selective_copy": {"vocab_size": 16, "num_tokens": 5},
    "induction": {"vocab_size": 16},
    "needle": {"needle_digits": 4, "depth": None},
}
CONTEXT = {"mqar": 40, "selective_copy": 24, "induction": 24, "needle": 120}


def _data(task, **task_over):
    return {"source": task, "task": {**SMALL[task], **task_over}}


def _batches(task, seed=0, n=3, batch_size=4, **task_over):
    it = make_train_iterator(_data(task, **task_over), batch_size=batch_size, context=CONTEXT[task], seed=seed)
    return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------
# Independent checks: parse a row the way a reader of the task's definition would


def _check_mqar(seq, mask, p):
    V, N = p["vocab_size"], p["num_kv_pairs"]
    kv = {int(seq[2 * i]): int(seq[2 * i + 1]) for i in range(N)}
    assert len(kv) == N and all(1 <= k < V // 2 for k in kv) and all(V // 2 <= v < V for v in kv.values())
    assert len(set(kv.values())) == N
    expect = np.zeros(mask.size, bool)
    for t in range(2 * N, seq.size - 1):  # every key asked again after the pairs, answered by its own value
        if seq[t] in kv:
            assert (t - 2 * N) % 2 == 0 and seq[t + 1] == kv[int(seq[t])]
            expect[t] = True
        elif not (t > 2 * N and seq[t - 1] in kv):
            assert seq[t] == synthetic.FILLER
    assert expect.sum() == N  # num_queries None: each key once
    assert len({int(seq[t]) for t in np.flatnonzero(expect)}) == N
    np.testing.assert_array_equal(mask > 0, expect)


def _check_selective_copy(seq, mask, p):
    K = p["num_tokens"]
    marker = int(np.flatnonzero(seq == synthetic.MARKER)[0])
    data = seq[:marker][seq[:marker] != synthetic.FILLER]
    assert marker == seq.size - 1 - K and data.size == K and (data >= 2).all()
    np.testing.assert_array_equal(seq[marker + 1:], data)  # the answers are the data tokens in order
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(marker, marker + K))


def _check_induction(seq, mask, p):
    trig = np.flatnonzero(seq == synthetic.TRIGGER)
    assert trig.size == 2 and trig[1] == seq.size - 2
    assert seq[-1] == seq[trig[0] + 1]  # the answer is the token that followed the first trigger
    np.testing.assert_array_equal(np.flatnonzero(mask), [seq.size - 2])


def _check_needle(seq, mask, p):
    text = bytes(seq.astype(np.uint8)).decode("latin-1")
    d = p["needle_digits"]
    m = re.search(rf"\n# The secret number of ([a-z]{{5}}) is (\d{{{d}}})\.\n", text)
    assert m, text
    key, value = m.groups()
    assert text.endswith(f"\n# The secret number of {key} is {value}")
    answers = seq[1:][mask > 0]
    assert bytes(answers.astype(np.uint8)).decode() == value and mask.sum() == d


CHECKS = {"mqar": _check_mqar, "selective_copy": _check_selective_copy, "induction": _check_induction,
          "needle": _check_needle}


@pytest.mark.parametrize("task", TASKS)
def test_answers_sit_where_the_loss_mask_says(task):
    p = task_params(_data(task) | {"source": task})
    for batch in _batches(task) + make_eval_batches(_data(task), batch_size=4, context=CONTEXT[task],
                                                    num_batches=2):
        assert set(batch) == set(BATCH_KEYS)
        B, T = batch["inputs"].shape
        assert (B, T) == (4, CONTEXT[task])
        answered = batch["loss_mask"][:, :-1] > 0
        if task == "mqar":  # an answer is a target, never an input: the next input is filler
            assert (batch["inputs"][:, 1:][answered] == synthetic.FILLER).all()
            assert (batch["targets"][:, :-1][answered] >= p["vocab_size"] // 2).all()
        same = ~answered if task == "mqar" else np.ones_like(answered)
        np.testing.assert_array_equal(batch["inputs"][:, 1:][same], batch["targets"][:, :-1][same])
        assert (batch["segment_ids"] == 1).all() and (batch["positions"] == np.arange(T)).all()
        assert batch["loss_mask"].dtype == np.float32 and batch["inputs"].dtype == np.int32
        top = 256 if task == "needle" else p["vocab_size"]
        assert batch["inputs"].min() >= 0 and batch["targets"].max() < top
        for b in range(B):
            seq = np.concatenate([batch["inputs"][b, :1], batch["targets"][b]])  # the answers included
            CHECKS[task](seq, batch["loss_mask"][b], p)


@pytest.mark.parametrize("task", TASKS)
def test_streams_are_deterministic_per_seed_and_differ_across_seeds(task):
    a, b, c = _batches(task, seed=3), _batches(task, seed=3), _batches(task, seed=4)
    for x, y in zip(a, b, strict=True):
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["targets"], z["targets"]) for x, z in zip(a, c, strict=True))
    # consecutive batches differ, and the held-out stream differs from every training seed's first batch
    assert not np.array_equal(a[0]["targets"], a[1]["targets"])
    ev = make_eval_batches(_data(task), batch_size=4, context=CONTEXT[task], num_batches=1)[0]
    ev2 = make_eval_batches(_data(task), batch_size=4, context=CONTEXT[task], num_batches=1)[0]
    np.testing.assert_array_equal(ev["targets"], ev2["targets"])
    assert not np.array_equal(ev["targets"], a[0]["targets"])
    ev_other = make_eval_batches(_data(task, eval_seed=7), batch_size=4, context=CONTEXT[task], num_batches=1)[0]
    assert not np.array_equal(ev["targets"], ev_other["targets"])


@pytest.mark.parametrize("task", ["mqar", "needle"])
def test_iterator_resumes_from_a_json_state(task):
    it = make_train_iterator(_data(task), batch_size=2, context=CONTEXT[task], seed=1)
    next(it), next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(2)]
    fresh = make_train_iterator(_data(task), batch_size=2, context=CONTEXT[task], seed=1)
    fresh.set_state(state)
    for x in want:
        y = next(fresh)
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(x[k], y[k])
    other = make_train_iterator(_data(task), batch_size=2, context=CONTEXT[task], seed=2)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


def test_mqar_options_queries_placement_and_needle_depth():
    # num_queries: only that many answers; power_a = 1 spreads queries uniformly, 0.01 packs them early
    (b,) = _batches("mqar", n=1, batch_size=8, num_queries=3)
    assert (b["loss_mask"].sum(1) == 3).all()

    def mean_query_position(a):
        batches = make_eval_batches({"source": "mqar", "task": {"vocab_size": 128, "num_kv_pairs": 4,
                                                                "power_a": a}},
                                    batch_size=16, context=256, num_batches=4)
        return np.mean([np.flatnonzero(x["loss_mask"][r]).mean() for x in batches for r in range(16)])

    assert mean_query_position(0.01) < 0.6 * mean_query_position(1.0)
    for depth in (0.0, 1.0):
        (b,) = _batches("needle", n=1, depth=depth)
        for r in range(4):
            text = bytes(b["inputs"][r].astype(np.uint8)).decode("latin-1")
            at = text.index("\n# The secret number of")
            n_hay = CONTEXT["needle"] + 1 - len("\n# The secret number of abcde is 0000.\n") - \
                len("\n# The secret number of abcde is 0000")
            assert at == (0 if depth == 0.0 else n_hay)


def test_answer_accuracy_is_exact_match_on_answer_tokens():
    batch = {"targets": np.array([[1, 2, 3, 4]]), "loss_mask": np.array([[0, 1, 1, 0]], np.float32)}
    assert synthetic.answer_accuracy(np.array([[9, 2, 0, 9]]), batch) == 0.5
    assert synthetic.answer_accuracy(np.array([[1, 2, 3, 4]]), batch) == 1.0
    assert np.isnan(synthetic.answer_accuracy(np.zeros((1, 4)), {**batch, "loss_mask": np.zeros((1, 4))}))


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.source=mqar2"], r"data.source = 'mqar2': must be one of stdlib, .* or mqar, selective_copy, "
                            r"induction, needle"),
    (["data.source=mqar", "data.task.num_kv_pairs=64"], r"data.task.num_kv_pairs = 64: .* at most 63"),
    (["data.source=mqar", "data.task.vocab_size=300"], r"data.task.vocab_size = 300: .* model.vocab_size = 259"),
    (["data.source=needle", "model.vocab_size=128"], r"data.source = 'needle': .* model.vocab_size = 128"),
    (["data.source=mqar", "train.context=20"], r"train.context = 20: too short .* must be >= 31"),
    (["data.source=mqar", "data.task.num_queries=9"], r"data.task.num_queries = 9: .* \[1, num_kv_pairs = 8\]"),
    (["data.source=mqar", "data.task.power_a=0.0"], r"data.task.power_a = 0.0: must be a number in \(0, 1\]"),
    (["data.source=needle", "data.task.depth=1.5"], r"data.task.depth = 1.5: must be None .* \[0, 1\]"),
    (["data.source=selective_copy", "train.context=8"], r"train.context = 8: too short"),
    (["data.source=induction", "data.path='x'"], r"data.path = 'x': must be None for source 'induction'"),
    (["data.source=mqar", "train.eval_contexts=[128, 16]"], r"train.eval_contexts = 16: too short"),
    (["train.eval_contexts=[]"], r"train.eval_contexts = \[\]: must be None or a non-empty list"),
])
def test_bad_task_settings_name_the_field(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(None, overrides)


def test_unknown_task_field_is_refused_by_the_data_config():
    from scaling.data.config import validate_data_config

    with pytest.raises(ValueError, match=r"data.task.n_pairs: unknown field; accepted fields: vocab_size"):
        validate_data_config({"source": "mqar", "task": {"n_pairs": 3}})
    with pytest.raises(ValueError, match="a synthetic task has no corpus"):
        from scaling.data import load_corpus

        load_corpus({"source": "mqar"})
