"""submitit is optional: a machine without it (the GPU machine has none) still runs local sweeps,
studies and the GPU benchmark's dry run; only the submitit executors need it (issue 25, item 1)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_STUDY = """
title: "Tiny"
paper: "a test"
about: "CE on synthetic data"
scales:
  mini:
    note: "synthetic, 1 epoch"
    grid:
      - {method: [ce], seed: [0]}
    set: {data: synthetic, arch: test_resnet, epochs: 1, batch_size: 16, checkpoint_every_s: 0, device: cpu}
tables:
  - {kind: classification, title: "Top-1"}
"""


def _without_submitit(tmp_path: Path, code: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run python code with submitit hidden: `sys.modules['submitit'] = None` in this process and, for
    the processes it starts, a `submitit` package first on the path whose import fails."""
    shadow = tmp_path / "shadow" / "submitit"
    shadow.mkdir(parents=True, exist_ok=True)
    (shadow / "__init__.py").write_text("raise ImportError('submitit is hidden by this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(ROOT)]),
           "OMP_NUM_THREADS": "1", "KEBENCH_NO_PROGRESS": "1"}
    prelude = "import sys; sys.modules['submitit'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_local_sweep_study_and_gpu_dry_run_without_submitit(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text("grid: {method: [ce], seed: [0]}\n"
                    "set: {data: synthetic, arch: test_resnet, epochs: 1, batch_size: 16, checkpoint_every_s: 0, "
                    "device: cpu}\n"
                    f"out: {tmp_path / 'sweep'}\n")
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY)
    code = (
        "from kebench.cli import main\n"
        "import runpy\n"
        "for args in (['sweep', sys.argv[1], '--executor', 'local'], ['study', 'run', sys.argv[2], '--out', sys.argv[3]]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, (args, exc.code)\n"
        "try:\n"
        "    main(['sweep', sys.argv[1], '--executor', 'slurm', '--retry-failed'])\n"
        "except SystemExit as exc:\n"
        "    print('slurm exit', exc.code)\n"
        "assert 'submitit' not in sys.modules or sys.modules['submitit'] is None\n"
        "sys.argv = ['gpu.py', '--cpu-dry-run']\n"
        "runpy.run_path(sys.argv_gpu, run_name='__main__')\n"
    ).replace("sys.argv_gpu", repr(str(ROOT / "benchmarks" / "gpu.py")))
    proc = _without_submitit(tmp_path, code, str(spec), str(study), str(tmp_path / "study"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert "sweep: 1 runs: 1 done" in err and "study: 1 runs: 1 done" in err
    assert (tmp_path / "study" / "report" / "index.html").is_file() or any((tmp_path / "study" / "report").iterdir())
    # Choosing a submitit executor without submitit is one clear error, exit 2.
    assert "slurm exit 2" in proc.stdout and "submitit, which is not installed here" in err
    assert "Traceback" not in err
    # the GPU benchmark's dry run went through every section, packing included
    assert "packing 2 run(s)" in proc.stdout and "KE Table 2" in proc.stdout
