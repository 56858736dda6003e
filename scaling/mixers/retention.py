"""Power retention (pattern letter R): the exact degree-p symmetric-power state, sized apart from the parameters
by head_dim and p. Ops: scaling/ops/power_retention.py; module: scaling/models/retention.py.

State: kv_heads * (D * head_dim + D) per layer, D = C(head_dim + p - 1, p): the state S [D, head_dim] and the
normaliser z [D] of each kv head (the gate is per kv head, so query heads of a group share it); the optional short
conv (retention.conv = d_conv > 0) adds (d_conv - 1) * (n_heads + 2 n_kv_heads) * head_dim.
"""

from __future__ import annotations

import math
import numbers

from scaling.fields import check_choice, check_int, fail
from scaling.mixers.base import MixerSpec, check_conv, chunk_pad, mean_keys, recurrent_state, validate_heads

FORMS = ("chunked", "parallel")  # model.retention.form


def sympow_dim(d: int, p: int) -> int:
    """Number of features of the degree-p symmetric power of a d-vector: C(d+p-1, p)."""
    for name, x in (("d", d), ("p", p)):
        if not isinstance(x, numbers.Integral) or isinstance(x, bool) or x < 1:
            raise ValueError(f"sympow_dim: {name} = {x!r}: must be an integer >= 1")
    return math.comb(int(d) + int(p) - 1, int(p))


def defaults() -> dict:
    return {
        "n_heads": 4, "n_kv_heads": 4, "p": 2, "chunk_size": 64, "rope": True,
        "rope_theta": 10_000.0, "normalize": "sum", "gate": True, "gate_init": 0.999,
        "conv": 0,  # width of a short causal conv over q/k/v (0 = none; 4 as in Mamba/Based)
        # the training / prefill forward: "chunked" (D = C(head_dim + p - 1, p) features a head) or "parallel" (the
        # attention form, (q.k)^p over the causal T x T block, as the sympow article trained); decode is recurrent
        "form": "chunked",
    }


def validate(m, r, prefix: str) -> None:
    validate_heads(m, r, prefix)
    check_choice(f"{prefix}.p", r.p, (1, 2, 3, 4))
    check_int(f"{prefix}.chunk_size", r.chunk_size)
    check_choice(f"{prefix}.normalize", r.normalize, ("sum", "rmsnorm"))
    check_choice(f"{prefix}.form", r.get("form", "chunked"), FORMS)
    if r.normalize == "sum" and r.p % 2:
        fail(f"{prefix}.normalize", r.normalize,
             f"sum normalisation needs an even p (p = {r.p}); use normalize = 'rmsnorm'")
    if not 0.0 < r.gate_init < 1.0:
        fail(f"{prefix}.gate_init", r.gate_init, "must be in (0, 1): the gate's initial value")
    check_conv(f"{prefix}.conv", r.conv)


def dims(m) -> tuple[int, int, int]:
    r = m.retention
    return r.n_heads, r.n_kv_heads, m.d_model // r.n_heads


def conv_channels(m) -> int:
    """Channels of the optional short conv over q/k/v: (n_heads + 2 n_kv_heads) * head_dim (0 without it)."""
    hq, hk, hd = dims(m)
    return (hq + 2 * hk) * hd if m.retention.conv else 0


def params(m) -> int:
    hq, hk, hd = dims(m)
    gate = (m.d_model + 1) * hk if m.retention.gate else 0
    conv = (m.retention.conv + 1) * conv_channels(m)  # weights and bias
    return m.d_model * hd * (2 * hq + 2 * hk) + gate + conv


def flops(m, context: int, causal: bool = False) -> dict[str, float]:
    """Per token of the chunked form, chunk c = min(chunk_size, T) (a ragged tail is padded to c):

    - intra-chunk attention: scores c*d and values c*e per query head (the full c x c block is computed);
    - feature map: p multiplies per feature, for phi(q) per query head and phi(k) per kv head;
    - state query phi(q)^T [S, z]: D*(e + 1) per query head (none when T fits in one chunk: a fresh call
      has no state to query); state update phi(k) v^T and sum phi(k): D*(e + 1) per kv head; decaying S
      once per chunk: D*e/c per kv head.
    D = C(head_dim + p - 1, p) makes the state term tunable independently of the parameters.
    ``retention.form = "parallel"`` (the attention form): scores and values over the keys, as attention's.
    ``causal``: the intra-chunk block counts (c + 1) / 2 keys a query, its unmasked half.
    """
    hq, hk, hd = dims(m)
    r = m.retention
    gate = 2.0 * m.d_model * hk if r.gate else 0.0
    conv = 2.0 * r.conv * conv_channels(m)  # the depthwise conv, counted with the weights as Mamba's
    weights = 2.0 * m.d_model * hd * (2 * hq + 2 * hk) + gate + conv
    if r.get("form", "chunked") == "parallel":  # the attention form: scores and values over the keys, no features
        return {"weights": weights, "state": 2.0 * 2 * mean_keys(context, None, causal) * hq * hd}
    dim = sympow_dim(hd, r.p)
    c, pad, n_chunks = chunk_pad(context, r.chunk_size)
    keys = mean_keys(c, None, causal)
    intra = 2.0 * keys * hd * hq + 2.0 * keys * hd * hq
    # a call that fits in one chunk (and starts from no state) never queries the state
    queried = hq if n_chunks > 1 else 0
    features = r.p * dim * (queried + hk)
    st = 2.0 * dim * (hd + 1) * (queried + hk) + dim * hd * hk / c
    return {"weights": weights, "state": pad * (intra + features + st)}


def state(m, context: int) -> dict[str, int]:
    del context  # constant in context: that is the point
    _, hk, hd = dims(m)
    dim = sympow_dim(hd, m.retention.p)
    return recurrent_state(m, hk * (dim * hd + dim), max(m.retention.conv - 1, 0) * conv_channels(m))


SPEC = MixerSpec("R", "retention", defaults, validate, params, flops, state,
                 summary="power retention: exact symmetric-power state, size set by head_dim and p")
