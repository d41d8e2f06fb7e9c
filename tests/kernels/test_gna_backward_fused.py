"""The GNA backward with dQ fused into the dK/dV kernel (``BwdTuning.fused_dq``) under the Triton interpreter.

The dK/dV kernel adds each tile pair's ``scale * dS K`` into a zeroed float32 buffer permuted as its Q stream
(pointer atomics here: the interpreter has no TMA reductions), and one inverse permutation writes it into dq.
Gradients against the split backward's (the same tile products summed in another order) and against torch
autograd of the float64 reference, on 2D/3D layouts with stride, dilation, causal axes, GQA, odd sizes, batch,
unequal tiles and block-sparse patterns; the dQ launch must not run.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from kernel_testing import GRAD_REL, check_backward_tuning, gna_kw, grad_rel, randn

if "sparsesim.kernels.gna_bwd" in sys.modules:  # imported before the interpreter was switched on
    importlib.reload(sys.modules["sparsesim.kernels.gna_bwd"])

from sparsesim.kernels import gna_bwd  # noqa: E402
from sparsesim.kernels.gna import gna_forward  # noqa: E402
from sparsesim.kernels.permute import tile_permute, unpermute_into  # noqa: E402
from sparsesim.kernels.reference import gna_reference  # noqa: E402

#: ||fused - split|| / ||split||: the same products, dQ summed by atomics in another order (and, in fp16, rounded
#: from one float32 sum instead of the dQ kernel's float32 accumulator: the same rounding once).
SAME = {torch.float32: 1e-5, torch.float16: 2e-3}
_kw = gna_kw
_rel = grad_rel
REL = GRAD_REL


CASES = [
    # id, shape, pattern, tiles, heads, heads_kv, dtype, batch
    ("2d-dilation-odd-causal", (9, 7), _kw((3, 3), (1, 2), (2, 2), (True, False)), {"q_tile": (4, 4)}, 2, 2,
     torch.float16, 1),
    ("2d-unequal-tiles-gqa", (9, 6), _kw((4, 3), (2, 1), (1, 2)), {"q_tile": (4, 4), "kv_tile": (2, 8)}, 4, 2,
     torch.float32, 1),
    ("2d-block-sparse-batch", (8, 8), _kw((4, 4), (4, 4)), {"q_tile": (4, 4)}, 2, 1, torch.float32, 2),
    ("2d-wide", (8, 24), _kw((5, 17)), {"q_tile": (4, 4)}, 2, 1, torch.float32, 1),
    ("3d-causal", (3, 4, 5), _kw((2, 3, 3), (1, 2, 1), 1, (False, False, True)), {"q_tile": (2, 2, 4)}, 2, 1,
     torch.float32, 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fused_matches_split_and_float64(case, monkeypatch):
    _, shape, kw, tiles, heads, heads_kv, dtype, batch = case
    dq_launches: list[int] = []
    real = gna_bwd._launch_dq
    monkeypatch.setattr(gna_bwd, "_launch_dq", lambda *a: (dq_launches.append(1), real(*a)))
    check_backward_tuning(shape, kw, tiles, heads, heads_kv, dtype, len(shape) + heads, batch=batch, same=SAME,
                          tuning=gna_bwd.fused_tuning((1 << 30, 64, 2)))
    assert dq_launches == [1], "the fused backward launched the dQ kernel (the one launch is the split's)"


def test_fused_dq_without_tma_descriptors(monkeypatch):
    """The permuted Q stream read through pointers (``SPARSESIM_NO_TMA=1``): dQ still fused, still right."""
    monkeypatch.setenv("SPARSESIM_NO_TMA", "1")
    q = randn(1, 9, 7, 2, 16, dtype=torch.float32, seed=11)
    k, v = randn(*q.shape, dtype=torch.float32, seed=12), randn(*q.shape, dtype=torch.float32, seed=13)
    do = randn(*q.shape, dtype=torch.float32, seed=14)
    call = {"window": (3, 5), "stride": (2, 1), "dilation": (2, 1), "q_tile": (4, 4)}
    out, lse = gna_forward(q, k, v, **call)
    fused = gna_bwd.gna_backward(do, q, k, v, out, lse, tuning=gna_bwd.fused_tuning((64, 64, 2)), **call)
    refs = [x.detach().double().requires_grad_() for x in (q, k, v)]
    gna_reference(*refs, window=(3, 5), stride=(2, 1), dilation=(2, 1)).backward(do.double())
    for name, f, r in zip(("dq", "dk", "dv"), fused, refs, strict=True):
        assert _rel(f, r.grad) < REL[torch.float32], (name, _rel(f, r.grad))


def test_fused_needs_a_permuted_stream_and_no_extra_tokens():
    q = randn(1, 6, 6, 2, 16, dtype=torch.float32, seed=9)
    out, lse = gna_forward(q, q, q, window=(3, 3), q_tile=(4, 4))
    gathered = gna_bwd.BwdTuning(fused_dq=True)
    with pytest.raises(ValueError, match="fused_dq=True with dkv_stream_layout='gather'.*allowed"):
        gna_bwd.gna_backward(out, q, q, q, out, lse, window=(3, 3), q_tile=(4, 4), tuning=gathered)
    x = randn(1, 36 + 5, 2, 16, dtype=torch.float32, seed=10)
    kw = {"window": (3, 3), "q_tile": (4, 4), "extra_tokens": 5, "input_size": (6, 6)}
    out, lse = gna_forward(x, x, x, **kw)
    with pytest.raises(ValueError, match="5 extra tokens; allowed"):
        gna_bwd.gna_backward(out, x, x, x, out, lse, tuning=gna_bwd.fused_tuning((64, 64, 2)), **kw)
    assert gna_bwd.fused_tuning((64, 64, 2)) == gna_bwd.BwdTuning(
        dkv_resident=64, dkv_stream=64, dkv_stages=2, dkv_stream_layout="permute", fused_dq=True)


def test_unpermute_into_casts_and_checks_its_shape():
    x = randn(2, 5, 7, 3, 8, dtype=torch.float32, seed=4)
    xp = tile_permute(x, (4, 4), dilation=(1, 2))
    out = torch.empty(2, 5, 7, 3, 8, dtype=torch.float16)
    assert unpermute_into(xp, out, (4, 4), dilation=(1, 2)) is out
    assert torch.equal(out, x.half())
    with pytest.raises(ValueError, match=r"unpermute_into: xp has shape \[4, 3, .*allowed"):
        unpermute_into(xp, torch.empty(2, 9, 7, 3, 8), (4, 4), dilation=(1, 2))
