"""CS-KD: class-pair batches, the loss against a hand computation (partner detached), and CS-KD
under the single, ke, dsd and bans regimes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kebench import registry
from kebench.errors import UserError
from kebench.run.engine import Run
from methods.cskd import ClassWiseSelfKD, class_partners


PARAMS = {"temperature": 4.0, "lambda_cls": 3.0, "batch_counts": "anchors"}


def test_partners_share_the_class_and_differ_from_the_anchor():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 1, 3, 0])  # class 2 and 3 have one image each
    for seed in range(20):
        partners = class_partners(labels, torch.Generator().manual_seed(seed))
        assert torch.equal(labels[partners], labels)
        alone = torch.tensor([i in (3, 7) for i in range(len(labels))])
        assert torch.equal(partners[alone], torch.tensor([3, 7]))  # single images pair with themselves
        assert (partners[~alone] != torch.arange(len(labels))[~alone]).all()
    drawn = {int(class_partners(labels, torch.Generator().manual_seed(s))[0]) for s in range(50)}
    assert drawn == {2, 5, 8}  # every other member of class 0 gets drawn


def test_batches_are_anchor_then_same_class_partner():
    labels = torch.arange(5).repeat_interleave(7)  # 35 images
    obj = ClassWiseSelfKD(PARAMS, None)
    batches = obj.batch_sampler(labels, 8, torch.Generator().manual_seed(0))
    assert len(batches) == 35 // 8 and all(len(b) == 16 for b in batches)
    anchors = torch.cat([b[:8] for b in batches])
    assert len(anchors.unique()) == len(anchors)  # each image is an anchor at most once per epoch
    for b in batches:
        assert torch.equal(labels[b[:8]], labels[b[8:]])
        assert (b[:8] != b[8:]).all()


def test_ke_code_batches_count_images_half_anchors_half_partners():
    """--cskd.batch-counts images: --batch-size 8 is 4 anchors + 4 partners (the KE code's 32 = 16 + 16),
    and an epoch is N // 8 steps (the KE loader's length): N images, half of them anchors."""
    labels = torch.arange(5).repeat_interleave(7)  # 35 images
    obj = ClassWiseSelfKD({**PARAMS, "batch_counts": "images"}, None)
    batches = obj.batch_sampler(labels, 8, torch.Generator().manual_seed(0))
    assert len(batches) == 35 // 8 and all(len(b) == 8 for b in batches)
    anchors = torch.cat([b[:4] for b in batches])
    assert len(anchors.unique()) == 16  # distinct anchors, a fresh random half each epoch
    for b in batches:
        assert torch.equal(labels[b[:4]], labels[b[4:]]) and (b[:4] != b[4:]).all()
    with pytest.raises(UserError, match="even batch size"):
        obj.batch_sampler(labels, 7, torch.Generator().manual_seed(0))


def test_odd_batch_with_images_counting_is_refused_before_the_run_starts(make_cfg, tmp_path):
    cfg = make_cfg("cskd", batch_size=15, plugin={"cskd.batch_counts": "images"})
    with pytest.raises(UserError, match="even batch size"):
        Run(cfg, show_progress=False)
    assert not (tmp_path / "results").exists()  # no run folder


def test_loss_is_ce_plus_lambda_t2_kl_with_partner_detached():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 2, 0, 2])
    obj = ClassWiseSelfKD(PARAMS, None)
    loss, logits = obj.loss(model, x, y)
    assert torch.equal(logits, model(x[:2]))
    a, p = model(x[:2]), model(x[2:]).detach()
    p_a, p_p = F.softmax(a / 4, 1), F.softmax(p / 4, 1)
    kl = (p_p * (p_p.log() - p_a.log())).sum(1).mean()
    expect = F.cross_entropy(a, y[:2]) + 3.0 * 16 * kl
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    g_obj = torch.autograd.grad(loss, model[1].weight)[0]
    g_ref = torch.autograd.grad(expect, model[1].weight)[0]
    assert torch.allclose(g_obj, g_ref, atol=1e-6)  # no gradient through the partner's logits
    assert not math.isclose(loss.item(), F.cross_entropy(a, y[:2]).item())


@pytest.mark.parametrize("method, plugin, passes", [
    ("cskd", {}, 1),
    ("cskd+dsd", {"dense_epochs": 1, "sparse_epochs": 1, "redense_epochs": 1}, 3),
    ("cskd+bans", {"generations": 2}, 2),
    ("cskd+ke", {"generations": 2}, 2),
    ("cskd+ke", {"generations": 2, "cskd.batch_counts": "images"}, 2),
])
def test_cskd_under_each_regime(make_cfg, method, plugin, passes):
    if "+ke" in method and "ke" not in registry.names("regime"):
        pytest.skip("the ke regime is not registered")
    cfg = make_cfg(method, epochs=1, plugin=plugin)
    run = Run(cfg, show_progress=False)
    seen = []
    original = run.objective.loss

    def spy(model, x, y):
        b = len(y) // 2
        seen.append(bool(torch.equal(y[:b], y[b:])))
        return original(model, x, y)

    run.objective.loss = spy
    result = run.execute()
    assert result["status"] == "complete" and len(result["passes"]) == passes
    assert seen and all(seen)  # every training batch of every pass is made of same-class pairs
    steps = sum(p["steps"] for p in result["passes"])
    per_step = cfg.batch_size * (1 if cfg.params["cskd"]["batch_counts"] == "images" else 2)
    assert sum(p["images"] for p in result["passes"]) == steps * per_step
