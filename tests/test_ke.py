"""The KE regime: generation records, slim network and cost, WELS/WELS-Rand masks, exact resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kebench.run import engine
from kebench.config import resolve
from kebench.errors import UserError
from kebench.nets.models import create_model
from kebench.run.results import load_torch
from kebench.nets.slim import load_slim
from kebench.nets.split import SplitMasks

BASE = {"data": "synthetic", "arch": "test_resnet", "epochs": 1, "batch_size": 16, "device": "cpu",
        "checkpoint_every_s": 0.0}


@pytest.fixture(autouse=True)
def quick_latency(monkeypatch):
    import kebench.nets.slim

    monkeypatch.setattr(kebench.nets.slim, "LATENCY_WARMUP", 1)
    monkeypatch.setattr(kebench.nets.slim, "LATENCY_ITERS", 2)


def _cfg(out, method="ke", plugin=None, **overrides):
    return resolve({**BASE, "out": str(out), "method": method, **overrides}, {}, plugin or {})


def _run(cfg, resume=False):
    return engine.execute(cfg, resume=resume, show_progress=False)


def test_generations_record_dense_slim_hypotheses_and_cost(tmp_path):
    cfg = _cfg(tmp_path, plugin={"generations": 2, "split_rate": 0.5})
    r = _run(cfg)
    assert r["status"] == "complete" and r["regime"] == "ke"
    assert [(p["kind"], p["index"]) for p in r["passes"]] == [("generation", 1), ("generation", 2)]
    convs = {n for n, m in create_model("test_resnet", 4).named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    for p in r["passes"]:
        assert {"top1", "slim_top1", "fit_abs_mean", "reset_abs_mean"} <= set(p["metrics"])
        assert set(p["hypotheses"]["layers"]) == convs
        assert p["hypotheses"]["split"] == "kels" and p["hypotheses"]["split_rate"] == 0.5
    assert r["final"]["N1_top1"] == r["passes"][0]["metrics"]["top1"]
    assert r["final"]["N1_slim_top1"] == r["passes"][0]["metrics"]["slim_top1"]
    assert "N3_top1" not in r["final"]  # only generations that exist
    cost = r["cost"]
    assert cost["slim"]["params"] < 0.35 * cost["dense"]["params"] and cost["slim"]["flops"] < cost["dense"]["flops"]
    assert cost["dense"]["latency_ms"] > 0 and cost["slim"]["latency_ms"] > 0
    assert r["ke"]["slim_file"] == "slim.pt"

    # slim.pt is the final model's fit-hypothesis: it scores the reported slim accuracy
    run_dir = Path(cfg.out) / cfg.run_id()
    slim = load_slim(run_dir / "slim.pt").eval()
    assert not any("mask" in k for k in slim.state_dict())
    run = engine.Run(cfg, show_progress=False)
    assert run.evaluate(slim, prefix="slim_")["slim_top1"] == r["final"]["slim_top1"]
    dense = run.model
    dense.load_state_dict(load_torch(run_dir / "model.pt")["state_dict"])
    assert run.evaluate(dense)["top1"] == r["final"]["top1"]


def _masks_per_generation(monkeypatch):
    seen = []
    original = SplitMasks.reinitialize

    def spy(self, model):
        seen.append({k: v.clone() for k, v in self.state_dict().items()})
        original(self, model)

    monkeypatch.setattr(SplitMasks, "reinitialize", spy)
    return seen


@pytest.mark.parametrize("split", ["wels", "wels-rand"])
def test_wels_masks_fixed_and_wels_rand_redraws(tmp_path, monkeypatch, split):
    seen = _masks_per_generation(monkeypatch)
    r = _run(_cfg(tmp_path, plugin={"generations": 3, "split": split, "split_rate": 0.7}))
    assert r["status"] == "complete" and len(seen) == 2  # re-initialised before generations 2 and 3
    same = all(torch.equal(seen[0][k], seen[1][k]) for k in seen[0])
    assert same == (split == "wels")
    assert all("slim_top1" not in p["metrics"] for p in r["passes"])  # no slim network for WELS
    assert "slim" not in r["cost"] and not (Path(r["config"]["out"]) / r["run_id"] / "slim.pt").exists()
    assert abs(r["passes"][0]["hypotheses"]["fit_fraction"] - 0.7) < 0.01


def test_smooth_composes_with_ke(tmp_path):
    r = _run(_cfg(tmp_path, method="smooth+ke", plugin={"generations": 2}))
    assert r["status"] == "complete" and r["objective"] == "smooth" and len(r["passes"]) == 2
    assert "slim_top1" in r["passes"][1]["metrics"]


def test_retrieval_objective_gets_slim_recall(tmp_path):
    r = _run(_cfg(tmp_path, method="triplet+ke", data="digits-retrieval", batch_size=20, resolution=16,
                  plugin={"generations": 2, "classes_per_batch": 5, "images_per_class": 4}))
    assert r["status"] == "complete" and r["task"] == "retrieval"
    metrics = r["passes"][-1]["metrics"]
    assert {"r@1", "slim_r@1", "slim_nmi"} <= set(metrics)
    slim = load_slim(Path(r["config"]["out"]) / r["run_id"] / "slim.pt")
    assert slim.get_classifier().out_features == r["config"]["params"]["triplet"]["embedding_dim"]


@pytest.mark.parametrize("plugin, message", [
    ({"split": "kelz"}, "ke: --split must be one of kels, wels, wels-rand, got 'kelz' (did you mean kels?)"),
    ({"split_rate": 1.5}, "must be in (0, 1]"),
    ({"generations": 0}, "generations must be >= 1"),
])
def test_bad_settings_are_user_errors(tmp_path, plugin, message):
    with pytest.raises(UserError) as exc:
        engine.Run(_cfg(tmp_path, plugin=plugin), show_progress=False)
    assert message in str(exc.value)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    import kebench.nets.slim

    kebench.nets.slim.LATENCY_ITERS, old = 2, kebench.nets.slim.LATENCY_ITERS
    try:
        cfg = _cfg(tmp_path_factory.mktemp("reference"), plugin={"generations": 3, "split_rate": 0.5}, epochs=2)
        return cfg, _run(cfg)
    finally:
        kebench.nets.slim.LATENCY_ITERS = old


def _comparable(result):
    return {"final": {k: v for k, v in result["final"].items()}, "best": result["best"],
            "passes": [{k: p[k] for k in ("kind", "index", "steps", "metrics", "hypotheses")} for p in result["passes"]]}


@pytest.mark.parametrize("kill_after", [4, 5], ids=["between-generations-2-3", "inside-generation-3"])
def test_killed_in_generation_3_resumes_to_identical_numbers(tmp_path, reference, kill_after, kill_run):
    """Checkpoints are saved after every epoch (2 per generation): save 4 ends generation 2, save 5
    is generation 3's first epoch. The resumed run must reproduce the uninterrupted one exactly."""
    ref_cfg, ref = reference
    cfg = _cfg(tmp_path, plugin={"generations": 3, "split_rate": 0.5}, epochs=2)
    assert cfg.run_id() == ref_cfg.run_id()
    kill_run(cfg, after=kill_after)
    run_dir = Path(cfg.out) / cfg.run_id()
    ck = load_torch(run_dir / "checkpoint.pt")
    assert ck["pass"] == (1 if kill_after == 4 else 2) and "ke_split" in ck["state"]

    resumed = _run(cfg, resume=True)
    assert _comparable(resumed) == _comparable(ref)
    ref_dir = Path(ref_cfg.out) / ref_cfg.run_id()
    a, b = load_torch(run_dir / "model.pt")["state_dict"], load_torch(ref_dir / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_slim(run_dir / "slim.pt").eval()(x), load_slim(ref_dir / "slim.pt").eval()(x))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["pass"], r["epoch"]) for r in rows] == [(p, e) for p in range(3) for e in (1, 2)]


def _bns(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_ke_official_init_draws_kaiming_fan_in_and_keeps_every_bn_gamma_at_one(arch):
    """--init ke-official: every conv/linear weight ~ N(0, 2/fan_in) (the KE builder's kaiming_normal,
    fan_in, relu), every BN gamma 1 and beta 0 -- timm zeroes the last BN of each residual block and
    draws convs with fan_out. DenseNet's classifier bias is 0, as the KE code sets it."""
    torch.manual_seed(0)
    timm_model = create_model(arch, 10).requires_grad_(False)
    torch.manual_seed(0)
    model = create_model(arch, 10, init="ke-official").requires_grad_(False)
    if arch == "resnet18":
        assert float(timm_model.layer1[0].bn2.weight.abs().max()) == 0  # timm: zero-init last BN gamma
        assert bool((model.layer1[0].bn2.weight == 1).all())
    assert all(bool((bn.weight == 1).all() and (bn.bias == 0).all()) for bn in _bns(model))
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    big = [m for m in convs if m.weight.numel() >= 20_000]  # enough draws for a 3% test of the std
    assert len(big) >= 5
    for m in big:
        fan_in = m.weight[0].numel()
        assert float(m.weight.std()) == pytest.approx((2 / fan_in) ** 0.5, rel=0.03)
        assert abs(float(m.weight.mean())) < 0.05 * (2 / fan_in) ** 0.5
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 20_000)
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    if fan_out != conv.weight[0].numel():  # timm's fan_out std differs: the two rules are told apart
        assert abs((2 / fan_out) ** 0.5 / (2 / conv.weight[0].numel()) ** 0.5 - 1) > 0.1
    head = model.get_classifier()
    if arch == "densenet121":
        assert bool((head.bias == 0).all())
    else:  # nn.Linear's own bias draw, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert float(head.bias.abs().max()) <= head.in_features ** -0.5 and float(head.bias.abs().max()) > 0


def test_ke_official_init_googlenet_is_truncated_normal_001():
    torch.manual_seed(0)
    model = create_model("googlenet", 10, init="ke-official").requires_grad_(False)
    weights = torch.cat([m.weight.flatten() for m in model.modules()
                         if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
    assert float(weights.abs().max()) <= 0.02  # cut at 2 sigma, as scipy's truncnorm(-2, 2, scale=0.01)
    assert float(weights.std()) == pytest.approx(0.01 * 0.8796, rel=0.01)  # std of N(0,1) cut at +-2
    assert all(bool((bn.weight == 1).all()) for bn in _bns(model))


def test_init_setting_reaches_the_run_and_keeps_old_run_ids(tmp_path):
    timm_cfg, ke_cfg = _cfg(tmp_path), _cfg(tmp_path, init="ke-official")
    assert timm_cfg.init == "timm" and ke_cfg.init == "ke-official" and timm_cfg.run_id() != ke_cfg.run_id()
    legacy = {k: v for k, v in timm_cfg.to_dict().items() if k != "init"}  # a run made before --init existed
    from kebench.config import from_dict
    assert from_dict(legacy).run_id() == timm_cfg.run_id()
    run = engine.Run(ke_cfg, show_progress=False)
    assert all(bool((bn.weight == 1).all()) for bn in _bns(run.model))  # test_resnet: timm would zero some
    with pytest.raises(UserError, match="init"):
        _cfg(tmp_path, init="xavier")
