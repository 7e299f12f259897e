"""The fused head cross-entropy must equal autograd through ``F.cross_entropy`` of the logits."""

import pytest
import torch
import torch.nn.functional as F

from tunehouse.train import head
from tunehouse.train.head import head_cross_entropy


def reference(h, w, y):
    logits = (h @ w.T).float()
    return F.cross_entropy(logits, y, reduction="sum"), int((logits.argmax(-1) == y).sum())


def inputs(n=70, d=16, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)
    w = torch.randn(vocab, d, generator=g) * 0.5
    y = torch.randint(0, vocab, (n,), generator=g)
    return h, w, y


@pytest.mark.parametrize("chunk", [1024, 16])  # one chunk, and several with a ragged last one
def test_loss_and_gradients_equal_autograd_fp32(monkeypatch, chunk):
    monkeypatch.setattr(head, "CHUNK", chunk)
    h, w, y = inputs()
    grads = []
    for fn in (reference, head_cross_entropy):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()  # weight too: full fine-tuning
        loss, correct = fn(hh, ww, y)
        (loss * 0.37).backward()
        grads.append((float(loss.detach()), correct, hh.grad, ww.grad))
    (l0, c0, gh0, gw0), (l1, c1, gh1, gw1) = grads
    assert l1 == pytest.approx(l0, rel=1e-6) and c1 == c0
    assert torch.allclose(gh1, gh0, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gw1, gw0, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_autograd_under_autocast():
    h, w, y = inputs(n=40, d=32, vocab=500, seed=1)
    h, w = h.bfloat16(), w.bfloat16()  # frozen bf16 head, as in LoRA training
    out = []
    for fn in (reference, head_cross_entropy):
        hh = h.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, correct = fn(hh, w, y)
        loss.backward()
        assert hh.grad.dtype == torch.bfloat16
        out.append((float(loss), correct, hh.grad.float()))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-5) and out[1][1] == out[0][1]
    assert torch.allclose(out[1][2], out[0][2], rtol=2e-2, atol=1e-3)


def test_no_grad_and_frozen_inputs_keep_no_gradient():
    h, w, y = inputs()
    with torch.no_grad():
        loss, correct = head_cross_entropy(h, w, y)
    ref, ref_correct = reference(h, w, y)
    assert float(loss) == pytest.approx(float(ref), rel=1e-6) and correct == ref_correct
    assert not loss.requires_grad


@pytest.mark.parametrize("flush", [False, True])  # as with torch.set_flush_denormal(True)
def test_a_target_whose_probability_underflows_keeps_an_exact_finite_loss(flush):
    h, w, y = inputs(n=20, d=16, vocab=300, seed=2)
    w[y[3]] = -200 * h[3] / h[3].norm() ** 2  # target logit -200: its probability is 0 in fp32
    w[y[7]] = -92 * h[7] / h[7].norm() ** 2  # -92: a denormal probability, or 0 when flushed
    torch.set_flush_denormal(flush)  # process-wide; off is the default, restored below
    try:
        hh = h.clone().requires_grad_()
        loss, _ = head_cross_entropy(hh, w, y)
        loss.backward()
    finally:
        torch.set_flush_denormal(False)
    ref_h = h.clone().requires_grad_()
    ref, _ = reference(ref_h, w, y)
    ref.backward()
    assert torch.isfinite(loss) and float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert float(loss) > 290  # the two far-off targets alone: both rows took the exact path
    assert torch.allclose(hh.grad, ref_h.grad, rtol=1e-5, atol=1e-6)
