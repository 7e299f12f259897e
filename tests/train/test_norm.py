"""The fused RMSNorm (``train.norm``) must give transformers' output bit for bit and its
input gradient to rounding, and must leave alone norms it does not reproduce."""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tunehouse.train.norm import use_fused_norms


def norm(dtype):
    torch.manual_seed(0)
    m = LlamaRMSNorm(96, eps=1e-5).to(dtype)
    with torch.no_grad():
        m.weight.copy_(1 + 0.3 * torch.randn(96))
    return m.requires_grad_(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_equal_and_gradient_close(dtype):
    m = norm(dtype)
    x = (torch.randn(2, 33, 96) * 4).to(dtype).requires_grad_()
    dy = torch.randn(2, 33, 96).to(dtype)
    ref = m(x)
    ref.backward(dy)
    ref_grad = x.grad.clone()
    x.grad = None
    assert use_fused_norms(m) == 1
    out = m(x)
    out.backward(dy)
    assert torch.equal(out, ref)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(x.grad.float(), ref_grad.float(), rtol=tol, atol=tol)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training
        assert torch.equal(m(x), ref)


def test_trainable_weight_keeps_transformers_forward():
    m = norm(torch.float32)
    use_fused_norms(m)
    m.weight.requires_grad_(True)
    m(torch.randn(3, 96)).sum().backward()
    assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0


class OffsetRMSNorm(LlamaRMSNorm):
    """Gemma's form, ``x̂ * (1 + weight)``: not what the fused norm computes."""

    def forward(self, hidden_states):
        xf = hidden_states.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (xf * (1.0 + self.weight.float())).to(hidden_states.dtype)


def test_other_norms_left_alone():
    m = OffsetRMSNorm(96)
    assert use_fused_norms(m) == 0
    assert "forward" not in m.__dict__
