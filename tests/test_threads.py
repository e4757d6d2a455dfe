"""The CPU thread policy: a run takes the cores other work leaves free (kebench/run/threads.py)."""
from __future__ import annotations

import pytest
import torch

from kebench.run import threads as T


@pytest.mark.parametrize("others, expected", [(None, 2), (0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (5.0, 1)])
def test_auto_takes_the_free_cores_and_at_least_one(others, expected):
    assert T.ThreadPolicy(cores=2).choose(others) == expected


def test_auto_on_a_large_machine_leaves_the_busy_cores():
    assert T.ThreadPolicy(cores=16).choose(5.2) == 11


def test_a_fixed_count_is_kept_whatever_the_load():
    policy = T.ThreadPolicy(fixed=3, cores=2)
    assert policy.choose(1.9) == 3 and policy.choose(None) == 3


@pytest.mark.parametrize("env, omp, fixed", [({}, None, None), ({"KEBENCH_THREADS": "auto"}, None, None),
                                             ({"KEBENCH_THREADS": "3"}, None, 3), ({}, "2", 2),
                                             ({"KEBENCH_THREADS": "auto"}, "4", 4)])
def test_the_environment_fixes_or_frees_the_count(monkeypatch, env, omp, fixed):
    monkeypatch.delenv("KEBENCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if omp:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert T.fixed_threads() == fixed


def test_a_bad_setting_is_explained(monkeypatch):
    monkeypatch.setenv("KEBENCH_THREADS", "many")
    assert "KEBENCH_THREADS='many' is not a thread count" in T.check_env()
    monkeypatch.setenv("KEBENCH_THREADS", "2")
    assert T.check_env() is None


def test_the_meter_counts_other_processes_busy_time_and_not_this_ones(monkeypatch):
    """Machine busy seconds minus this process's CPU seconds, over the wall time between readings."""
    readings = iter([(100.0, 10.0, 50.0), (103.0, 11.0, 52.0), (103.5, 11.5, 53.0)])  # (busy, own, wall)
    monkeypatch.setattr(T.CpuMeter, "_read", staticmethod(lambda: next(readings)))
    meter = T.CpuMeter()
    assert meter.others_busy() == pytest.approx(1.0)  # 3 s busy, 1 s of it ours, over 2 s: one core
    assert meter.others_busy() == pytest.approx(0.0)  # only our own work


def test_the_meter_reads_this_machine():
    meter = T.CpuMeter()
    if meter.last is None:
        pytest.skip("no /proc/stat here")
    busy, own, _ = meter.last
    assert busy > 0 and own > 0


def test_a_run_records_its_threads_and_restores_the_callers(make_cfg, run_cfg, monkeypatch):
    monkeypatch.setenv("KEBENCH_THREADS", "2")
    before = torch.get_num_threads()
    out = run_cfg(make_cfg("ce"))
    assert out["threads"] == {"mode": "fixed", "cores": T.available_cores(), "threads": 2, "min": 2, "max": 2}
    assert torch.get_num_threads() == before
    assert "threads" not in out["config"]  # not part of the recipe, so not of the run id


def test_a_run_refuses_a_bad_setting_before_it_starts(make_cfg, monkeypatch):
    from kebench.errors import UserError
    from kebench.run.engine import Run

    monkeypatch.setenv("KEBENCH_THREADS", "many")
    with pytest.raises(UserError, match="is not a thread count"):
        Run(make_cfg("ce"), show_progress=False)
