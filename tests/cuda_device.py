"""The device of the `-m cuda` tests: CUDA, or a CPU with KEBENCH_CUDA_TEST_DEVICE=cpu (their logic
then runs in the ordinary suite through tests/test_cuda_on_cpu.py, so no CUDA test goes stale
unseen; assertions that only hold on a GPU check `ON_GPU`)."""
from __future__ import annotations

import os

import pytest
import torch

DEVICE = os.environ.get("KEBENCH_CUDA_TEST_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
needs_cuda = pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs a CUDA GPU")
