"""tunehouse: self-hosted, OpenAI-compatible fine-tuning for open language models.

Importing the package bounds PyTorch's CPU kernel caches (before torch's first matmul, which
is when oneDNN and ideep read their capacities; a value the user has set wins). oneDNN keeps a
compiled kernel for every matmul shape it meets, about 0.6 MB each, up to 1,024 per process
plus 1,024 per calling thread. Training on packed rows, evaluation and serving prompts of any
length meet new shapes all the time, so the caches only ever grew: by 60-90 MB per training
step, +1.3 GB of peak memory over a 20-step benchmark run. One packed row uses about 32
shapes, so 128 entries keep the kernels of the last few rows, which is all that is reused;
speed was unchanged in measurements (``benchmarks/README.md``, ninth revision).
"""

import os as _os

__version__ = "0.1.0"

KERNEL_CACHE_ENTRIES = 128
#: The capacity variables this import set (those the user had not set already).
BOUNDED_CACHES = [name for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
                  if name not in _os.environ]
for _name in BOUNDED_CACHES:
    _os.environ[_name] = str(KERNEL_CACHE_ENTRIES)
