"""The CPU attention kernel against a float64 reference built from PyTorch's own SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunehouse.train import cpu_attention
from tunehouse.train.cpu_attention import packed_causal_attention


def _reference(q, k, v, bounds, scale):
    """Per-example causal SDPA in float64, key/value heads repeated as transformers does."""
    rep = q.shape[0] // k.shape[0]
    outs = [F.scaled_dot_product_attention(q[:, s:e], k[:, s:e].repeat_interleave(rep, 0),
                                           v[:, s:e].repeat_interleave(rep, 0), is_causal=True,
                                           scale=scale)
            for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outs, 1).transpose(0, 1)


def _inputs(bounds, heads=6, kv_heads=2, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = bounds[-1]
    q = torch.randn(heads, t, dim, generator=g, dtype=torch.float64)
    k = torch.randn(kv_heads, t, dim, generator=g, dtype=torch.float64)
    v = torch.randn(kv_heads, t, dim, generator=g, dtype=torch.float64)
    dout = torch.randn(t, heads, dim, generator=g, dtype=torch.float64)
    return q, k, v, dout


def _run(q, k, v, dout, bounds, scale, dtype):
    qq, kk, vv = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    out = packed_causal_attention(qq, kk, vv, bounds, scale)
    grads = torch.autograd.grad(out, (qq, kk, vv), dout.to(dtype))
    return out, grads


def _reference_and_grads(q, k, v, dout, bounds, scale):
    """The float64 reference output and its gradients with respect to q, k and v."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    ref = _reference(q, k, v, bounds, scale)
    return ref.detach(), torch.autograd.grad(ref, (q, k, v), dout)


def _errors(out, grads, ref, ref_grads):
    """Largest absolute error of the output and of each gradient against the reference."""
    return [float((a.detach().double() - b).abs().max())
            for a, b in zip((out, *grads), (ref, *ref_grads))]


# several examples, one shorter than a block, lengths across block edges, one past KEEP_MAX
BOUNDS = [0, 1, 7, 71, 200, 264, 264 + cpu_attention.KEEP_MAX + 88]


@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4), (3, 1)])
def test_fp32_matches_reference(heads, kv_heads):
    q, k, v, dout = _inputs(BOUNDS, heads, kv_heads)
    errs = _errors(*_run(q, k, v, dout, BOUNDS, 0.25, torch.float32),
                   *_reference_and_grads(q, k, v, dout, BOUNDS, 0.25))
    assert max(errs) < 1e-4, errs


def test_bf16_is_as_close_as_the_flash_kernel():
    bounds = [0, 300, 700]
    q, k, v, dout = _inputs(bounds, 9, 3, 64)
    reference = _reference_and_grads(q, k, v, dout, bounds, 0.125)
    errs = _errors(*_run(q, k, v, dout, bounds, 0.125, torch.bfloat16), *reference)
    # PyTorch's flash kernel on the same bf16 inputs, per example
    qq, kk, vv = (x.detach().bfloat16()[None].requires_grad_() for x in (q, k, v))
    flash = [F.scaled_dot_product_attention(qq[:, :, s:e], kk[:, :, s:e], vv[:, :, s:e],
                                            is_causal=True, scale=0.125, enable_gqa=True)
             for s, e in zip(bounds[:-1], bounds[1:])]
    fout = torch.cat(flash, 2)[0].transpose(0, 1)
    fgrads = torch.autograd.grad(fout, (qq, kk, vv), dout.bfloat16())
    ferrs = _errors(fout, [g[0] for g in fgrads], *reference)
    for ours, theirs in zip(errs, ferrs):
        assert ours < 2 * theirs + 0.01, (errs, ferrs)


def test_kept_and_recomputed_probabilities_agree(monkeypatch):
    bounds = [0, 90, 300]
    q, k, v, dout = _inputs(bounds)
    kept = _run(q, k, v, dout, bounds, 0.25, torch.float32)
    monkeypatch.setattr(cpu_attention, "KEEP_MAX", 0)
    recomputed = _run(q, k, v, dout, bounds, 0.25, torch.float32)
    for a, b in zip((kept[0], *kept[1]), (recomputed[0], *recomputed[1])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_no_grad_forward_matches():
    q, k, v, _ = _inputs(BOUNDS)
    with torch.no_grad():
        out = packed_causal_attention(q.float(), k.float(), v.float(), BOUNDS, 0.25)
    torch.testing.assert_close(out.double(), _reference(q, k, v, BOUNDS, 0.25), rtol=1e-4, atol=1e-4)
