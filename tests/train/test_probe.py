"""``train.probe.reproduces``: a fused forward counts only if it matches in both precisions."""

import torch

from tunehouse.train.probe import reproduces


def test_a_difference_in_either_precision_rejects():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(3, 8)
    assert reproduces(lin, lin, x)
    assert not reproduces(lin, lambda t: lin(t) + 1e-3, x)  # differs without autocast

    def fp32_always(t):  # the same without autocast; under autocast it ignores bf16
        with torch.autocast("cpu", enabled=False):
            return lin(t)

    assert not reproduces(lin, fp32_always, x)
