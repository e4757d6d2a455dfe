"""Every `-m cuda` test runs in the ordinary suite too, on a CPU (KEBENCH_CUDA_TEST_DEVICE=cpu), so a
CUDA test cannot go stale unseen between the rare sessions that have a GPU."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CUDA_TEST_FILES = ("tests/test_cuda.py", "tests/test_agevo.py", "tests/test_binarize.py")
#: cuda tests whose logic needs a GPU (each says why in its skip reason)
CUDA_TESTS = 10  # 8 in test_cuda.py, one each in test_agevo.py and test_binarize.py
GPU_ONLY = 1  # test_compile_with_inductor_trains_like_eager: inductor's C++ builds take minutes on a CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: run `pytest -m cuda` on it instead")
def test_every_cuda_test_passes_with_its_logic_on_a_cpu(tmp_path):
    env = {**os.environ, "KEBENCH_CUDA_TEST_DEVICE": "cpu", "KEBENCH_NO_PROGRESS": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
                          *CUDA_TEST_FILES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    skipped = int(m.group(1)) if (m := re.search(r"(\d+) skipped", summary)) else 0
    assert (passed, skipped) == (CUDA_TESTS - GPU_ONLY, GPU_ONLY), summary
