"""Multi-process runs (DDP, gloo on CPU, 2 processes): a valid result written once, the global
batch kept, and masks / re-initialised weights identical on every rank."""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from kebench import registry
from kebench.run import distributed
from kebench.run import guard
from kebench.run import launch
from kebench.errors import UserError

TOY_REGIME = textwrap.dedent('''
    import os

    import torch
    from torch import nn

    from kebench.plugin import Regime


    class RandomMasks(Regime):
        """Generations with a random mask per conv/linear weight, kept in a model buffer; before each
        generation after the first it redraws the masks from torch's global RNG and re-initialises
        the masked-out weights. It first uses the RNG a rank-dependent number of times (as
        data-dependent code could), so only the engine's start-of-pass sync makes ranks agree."""

        kind = "regime"
        defaults = {"generations": 2}

        def run(self, run):
            rank = int(os.environ.get("RANK", "0"))
            layers = [m for m in run.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            for m in layers:
                if "toy_mask" not in m._buffers:
                    m.register_buffer("toy_mask", torch.ones_like(m.weight, dtype=torch.bool))
            for g in range(1, self.params.generations + 1):
                if g > 1:
                    torch.rand(rank + 1)
                    for m in layers:
                        m.toy_mask.copy_(torch.rand(m.weight.shape) < 0.5)
                        with torch.no_grad():
                            m.weight.copy_(torch.where(m.toy_mask, m.weight, 0.05 * torch.randn_like(m.weight)))
                run.fit(kind="generation", label=g)
                torch.save({"masks": [m.toy_mask.clone() for m in layers],
                            "state": {k: v.clone() for k, v in run.model.state_dict().items()}},
                           run.dir / f"rank{rank}_gen{g}.pt")
''')


# Objectives that record, on every rank and step, what their loss saw (one line per step).
PROBES = textwrap.dedent('''
    import os

    import methods.triplet
    from methods.cskd import ClassWiseSelfKD
    from methods.triplet import Triplet


    def _log(run, name, text):
        with open(run.dir / f"rank{os.environ.get('RANK', '0')}_{name}.txt", "a") as f:
            f.write(text + "\\n")


    class PairProbe(ClassWiseSelfKD):
        """CS-KD; logs the share of anchor/partner pairs of one class among this rank's pairs."""

        kind = "objective"
        defaults = {"temperature": 4.0, "lambda_cls": 3.0, "batch_counts": "anchors"}

        def loss(self, model, x, y):
            b = len(y) // 2
            _log(self.run_ctx, "pairs", f"{b} {(y[:b] == y[b:]).float().mean().item()}")
            return super().loss(model, x, y)


    class MiningProbe(Triplet):
        """Triplet; logs the labels the semi-hard mining ran over."""

        kind = "objective"
        defaults = {"margin": 0.2, "embedding_dim": 8, "classes_per_batch": 4, "images_per_class": 4}

        def loss(self, model, x, y):
            real = methods.triplet.semihard_triplet_loss

            def logged(emb, labels, margin):
                _log(self.run_ctx, "mined", " ".join(map(str, labels.tolist())))
                return real(emb, labels, margin)

            methods.triplet.semihard_triplet_loss = logged
            try:
                return super().loss(model, x, y)
            finally:
                methods.triplet.semihard_triplet_loss = real
''')


def _plugin_module(tmp_path, monkeypatch, module: str, source: str, entry_points: str):
    """`source` as an out-of-tree plugin module (entry points), visible to spawned ranks too."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / f"{module}.py").write_text(source)
    dist = plugins / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[kebench.methods]\n{entry_points}\n")
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    registry.reload()


@pytest.fixture
def toy_regime(tmp_path, monkeypatch):
    _plugin_module(tmp_path, monkeypatch, "ddp_toy", TOY_REGIME, "randmask = ddp_toy:RandomMasks")
    yield
    sys.modules.pop("ddp_toy", None)
    registry.reload()


@pytest.fixture
def probes(tmp_path, monkeypatch):
    _plugin_module(tmp_path, monkeypatch, "ddp_probes", PROBES,
                   "pairprobe = ddp_probes:PairProbe\nminingprobe = ddp_probes:MiningProbe")
    yield
    sys.modules.pop("ddp_probes", None)
    registry.reload()


def test_two_process_run_is_valid_and_masks_match_across_ranks(toy_regime, make_cfg):
    """Interrupted by SIGTERM mid-run (every rank stops at the same step), resumed, then checked."""
    cfg = make_cfg("randmask", epochs=3, checkpoint_every_s=0)
    run_dir = Path(cfg.out) / cfg.run_id()

    def stop_after_first_checkpoint():
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # launch() passes it on to both ranks

    previous = signal.signal(signal.SIGTERM, lambda *a: None)  # a late signal must not kill pytest
    try:
        stopper = threading.Thread(target=stop_after_first_checkpoint)
        stopper.start()
        with pytest.raises(guard.RunInterrupted, match="stopped by SIGTERM"):
            launch.launch(cfg, 2, show_progress=False)
        stopper.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
        guard.STOP.clear()
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) < 6

    (record,) = launch.launch(cfg, 2, resume=True, show_progress=False)
    assert record["status"] == "complete" and record["method"] == "ce+randmask"
    assert record["distributed"] == {"world_size": 2, "backend": "gloo", "batch_per_process": 8,
                                     "replicas_identical": True}
    assert 0.0 <= record["final"]["top1"] <= 1.0 and len(record["passes"]) == 2
    # the global batch is --batch-size: as many steps and images as one process would train
    assert record["training"]["steps"] == 2 * 3 * 6 and record["training"]["images"] == 2 * 3 * 6 * 16
    assert json.loads((run_dir / "result.json").read_text())["final"] == record["final"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["pass"], r["epoch"]) for r in rows] == [(p, e) for p in (0, 1) for e in (1, 2, 3)]  # rank 0 only
    assert not list(run_dir.glob("*.tmp")) and not (run_dir / "checkpoint.pt").exists()

    for g in (1, 2):
        ranks = [torch.load(run_dir / f"rank{r}_gen{g}.pt", weights_only=True) for r in (0, 1)]
        assert all(torch.equal(a, b) for a, b in zip(ranks[0]["masks"], ranks[1]["masks"])), f"masks differ, gen {g}"
        assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
        assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ranks[0]["state"]), g
    gen2 = torch.load(run_dir / "rank0_gen2.pt", weights_only=True)["masks"]
    kept = sum(m.sum().item() for m in gen2) / sum(m.numel() for m in gen2)
    assert 0.4 < kept < 0.6  # the second generation really drew random masks


def test_two_process_knowledge_evolution_keeps_replicas_identical(make_cfg, monkeypatch):
    if "ke" not in registry.names():
        pytest.skip("methods/ke.py is not registered")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = make_cfg("ke", plugin={"generations": "2", "split": "wels-rand"}, epochs=1)
    (record,) = launch.launch(cfg, 2, show_progress=False)
    assert record["status"] == "complete" and len(record["passes"]) == 2
    assert record["distributed"]["replicas_identical"] is True  # model, KE masks and split, bit for bit
    assert 0.0 <= record["final"]["top1"] <= 1.0


def test_two_process_cskd_keeps_every_anchor_with_its_partner(probes, make_cfg):
    """Each rank gets half the anchors *and their partners* (a contiguous split paired unrelated
    samples: about 1 in 4 of one class at 4 balanced classes)."""
    cfg = make_cfg("pairprobe", epochs=1)
    (record,) = launch.launch(cfg, 2, show_progress=False)
    assert record["status"] == "complete" and record["distributed"]["replicas_identical"] is True
    run_dir = Path(cfg.out) / cfg.run_id()
    for rank in (0, 1):
        lines = (run_dir / f"rank{rank}_pairs.txt").read_text().split()
        anchors, same = [int(v) for v in lines[::2]], [float(v) for v in lines[1::2]]
        assert len(same) == 6 and set(anchors) == {8}  # 6 steps, 16 / 2 anchors per rank
        assert all(v == 1.0 for v in same)


def test_two_process_triplet_mines_the_whole_pk_batch(probes, make_cfg):
    """Semi-hard negatives are mined over all P x K images (gathered from both ranks), as one
    process does; each rank trains on half of them."""
    cfg = make_cfg("miningprobe", data="digits-retrieval", batch_size=16, epochs=1)
    (record,) = launch.launch(cfg, 2, show_progress=False)
    assert record["status"] == "complete" and record["distributed"]["batch_per_process"] == 8
    run_dir = Path(cfg.out) / cfg.run_id()
    batches = [(run_dir / f"rank{r}_mined.txt").read_text().splitlines() for r in (0, 1)]
    assert batches[0] == batches[1] and len(batches[0]) == record["training"]["steps"] > 0
    for line in batches[0]:
        labels = torch.tensor([int(v) for v in line.split()])
        assert len(labels) == 16 and sorted(torch.bincount(labels)[torch.bincount(labels) > 0].tolist()) == [4] * 4


def test_gathered_triplet_loss_has_the_one_process_gradient(tmp_path):
    """Two ranks, each with half the batch, DDP-averaged: the same loss and parameter gradient as
    one process with the whole batch."""
    import torch.multiprocessing as mp

    mp.start_processes(_gradient_rank, args=(launch.free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    from methods.triplet import semihard_triplet_loss

    x, y, model = _gradient_case()
    loss = semihard_triplet_loss(torch.nn.functional.normalize(model(x), dim=1), y, 0.2)
    loss.backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"grad{rank}.pt", weights_only=True)
        assert abs(got["loss"] - loss.item()) < 1e-6
        assert torch.allclose(got["grad"], model.weight.grad, rtol=1e-5, atol=1e-7)


def _gradient_case():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(12, 5, generator=gen), torch.arange(3).repeat_interleave(4)
    model = torch.nn.Linear(5, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 5, generator=gen))
    return x, y, model


def _gradient_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from methods.triplet import semihard_triplet_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x, y, model = _gradient_case()
        ddp = distributed.DDP(model, torch.device("cpu"))
        xs, ys = x.tensor_split(2)[rank], y.tensor_split(2)[rank]
        emb = torch.nn.functional.normalize(ddp(xs), dim=1)
        loss = distributed.global_loss(semihard_triplet_loss(distributed.gather_rows(emb),
                                                             distributed.gather_rows(ys), 0.2))
        loss.backward()
        torch.save({"loss": loss.item(), "grad": model.weight.grad}, Path(out) / f"grad{rank}.pt")
        dist.barrier()  # neither rank tears the group down while the other's backward collectives run
    finally:
        dist.destroy_process_group()


def test_launch_refuses_what_cannot_work_before_spawning(make_cfg):
    with pytest.raises(UserError, match="--batch-size 15 is the global batch and must be divisible by --nproc 2"):
        launch.launch(make_cfg(batch_size=15), 2)
    with pytest.raises(UserError, match="--nproc must be >= 1"):
        launch.launch(make_cfg(), 0)


def test_ddp_wrapper_answers_model_attributes_and_counts_forwards():
    """Objectives call model.forward_features / get_classifier on the wrapper; a step that bypasses
    the wrapper's forward is detected (forward_calls == 0), so the engine averages its gradients."""
    import torch.distributed as dist

    from kebench.nets.models import create_model

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{launch.free_port()}", rank=0, world_size=1)
    try:
        model = create_model("test_resnet", num_classes=3, in_chans=3)
        ddp = distributed.DDP(model, torch.device("cpu"))
        assert ddp.get_classifier() is model.get_classifier() and ddp.num_features == model.num_features
        x = torch.randn(2, 3, 16, 16)
        ddp(x).sum().backward()
        assert ddp.forward_calls == 1
        ddp.forward_calls = 0
        model.zero_grad()
        ddp.forward_head(ddp.forward_features(x)).sum().backward()  # bypasses DDP's forward
        assert ddp.forward_calls == 0
        grads = [p.grad.clone() for p in model.parameters()]
        distributed.average_grads(model.parameters())  # world size 1: the mean is the gradient itself
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
        with pytest.raises(AttributeError):
            ddp.no_such_attribute
    finally:
        dist.destroy_process_group()
