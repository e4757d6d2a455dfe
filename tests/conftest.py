"""Shared test helpers: tiny models, tiny synthetic data, a temporary results folder. CPU only."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("KEBENCH_NO_PROGRESS", "1")
os.environ.setdefault("KEBENCH_THREADS", "1")  # tests compute single-threaded, as torch.set_num_threads(1) above


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU, skipped without one (run them with pytest -m cuda)")
    config.addinivalue_line("markers", "slurm: runs on a one-node SLURM cluster started by the tests "
                                       "(tests/slurm_cluster.py), skipped where its daemons cannot start")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (munged, slurmctld, slurmd) for the session; SLURM_CONF points
    the SLURM commands at it. Skips, with the reason, where the daemons cannot start."""
    import slurm_cluster as sc

    try:
        cluster = sc.start(tmp_path_factory.mktemp("slurm"))
    except sc.Unavailable as exc:
        pytest.skip(f"no SLURM test cluster: {exc}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.cancel_all()
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(method='ce', **overrides) -> a resolved RunConfig on synthetic data with a tiny model."""
    from kebench.config import resolve

    def _make(method: str = "ce", plugin: dict | None = None, **overrides):
        base = {"data": "synthetic", "arch": "test_resnet", "epochs": 1, "batch_size": 16,
                "device": "cpu", "out": str(tmp_path / "results"), "method": method,
                "checkpoint_every_s": 0.0}
        base.update(overrides)
        return resolve(base, {}, plugin or {})

    return _make


@pytest.fixture
def run_cfg():
    """run_cfg(cfg) -> result dict, running quietly."""
    from kebench.run.engine import execute

    def _run(cfg, resume=False):
        return execute(cfg, resume=resume, show_progress=False)

    return _run


@pytest.fixture
def kill_run(monkeypatch):
    """kill_run(cfg, after=N) or kill_run(cfg, when=fn(pass_state)): run cfg and kill it (a
    KeyboardInterrupt, as Ctrl-C or a dead machine would) right after its N-th checkpoint, or after
    the first checkpoint for which when() holds. Resume tests then rerun it with resume=True."""
    from kebench.run import engine

    def _kill(cfg, after: int | None = None, when=None):
        original, saves = engine.Run.save_checkpoint, []

        def dying_save(self, model, optimizer, scaler, ps, complete):
            original(self, model, optimizer, scaler, ps, complete)
            saves.append(ps.kind)
            if (after is not None and len(saves) == after) or (when is not None and when(ps)):
                raise KeyboardInterrupt

        monkeypatch.setattr(engine.Run, "save_checkpoint", dying_save)
        try:
            with pytest.raises(KeyboardInterrupt):
                engine.execute(cfg, show_progress=False)
        finally:
            monkeypatch.setattr(engine.Run, "save_checkpoint", original)

    return _kill


@pytest.fixture
def cli_run(capsys):
    """cli_run(args) -> (exit code, stdout, stderr) of `kebench ARGS`, run in this process."""
    from kebench import cli

    def _run(args):
        capsys.readouterr()
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run
