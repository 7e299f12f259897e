"""Importing tunehouse bounds PyTorch's CPU kernel caches, so memory stops growing with shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import tunehouse

CACHE_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")

# 2 x 200 bf16 matmuls of as many shapes (a packed row's token count is new at every row), in a
# fresh process: how much more glibc heap is in use after each 200 (the caches' entries).
GROWTH = """
import ctypes, json, sys
if sys.argv[1] == "import":
    import tunehouse
import torch

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
torch.set_num_threads(1)
w = torch.randn(256, 256, dtype=torch.bfloat16)
marks = [libc.mallinfo2().uordblks]
for first in (100, 300):
    for m in range(first, first + 200):
        torch.randn(m, 256, dtype=torch.bfloat16) @ w.t()
    marks.append(libc.mallinfo2().uordblks)
print(json.dumps([b - a for a, b in zip(marks, marks[1:])]))
"""


def _growth(import_tunehouse: bool) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS}
    out = subprocess.run([sys.executable, "-c", GROWTH, "import" if import_tunehouse else "plain"],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_kernel_caches_stay_bounded() -> None:
    import torch

    if not torch.backends.mkldnn.is_available():
        pytest.skip("PyTorch built without oneDNN")
    plain, bounded = _growth(False), _growth(True)
    assert plain[1] > 40 << 20, plain  # without bounds, every new shape adds to the caches
    assert bounded[1] < plain[1] / 10, (plain, bounded)  # with them, the second 200 add ~nothing


def test_a_users_own_capacity_wins() -> None:
    code = ("import json, os, tunehouse; print(json.dumps([tunehouse.BOUNDED_CACHES, "
            f"[os.environ[k] for k in {CACHE_VARS!r}]]))")
    env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS} | {"LRU_CACHE_CAPACITY": "7"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    bounded, values = json.loads(out.stdout.strip().splitlines()[-1])
    assert bounded == ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    assert values == [str(tunehouse.KERNEL_CACHE_ENTRIES), "7"]
