"""AdaCos: the cosine head replaces the classifier, its class weights stay fixed (the KE paper's
reference code) or train (--adacos.train-weights), the scale starts at sqrt(2)*ln(C-1), one update
follows the paper's formula, eval never updates it, C = 2 works."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from kebench.run.engine import Run
from methods.adacos import MIN_SCALE, AdaCos, CosineHead, cosine_head, initial_scale


class Features(nn.Module):
    """Identity 'backbone' + cosine head: the batch *is* the feature matrix."""

    def __init__(self, weight):
        super().__init__()
        self.head = CosineHead(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(weight)

    def forward(self, x):
        return self.head(x)


TRAINED = {"train_weights": True}


def _expected_update(s0, cos, labels):
    n, c = len(cos), len(cos[0])
    b_avg = sum(math.exp(s0 * cos[i][k]) for i in range(n) for k in range(c) if k != labels[i]) / n
    thetas = sorted(math.acos(cos[i][labels[i]]) for i in range(n))
    theta_med = thetas[(n - 1) // 2]
    return math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))


def test_initial_scale_and_c2_fallback():
    assert initial_scale(10) == pytest.approx(math.sqrt(2) * math.log(9))
    assert initial_scale(200) == pytest.approx(math.sqrt(2) * math.log(199))
    assert initial_scale(2) == MIN_SCALE > 0  # the formula gives 0 at C = 2
    head = CosineHead(8, 5)
    assert float(head.s) == pytest.approx(math.sqrt(2) * math.log(4))
    assert "s" in dict(head.named_buffers()) and "s" not in dict(head.named_parameters())


@pytest.mark.parametrize("labels", [[0, 1, 2], [1, 2, 0]])  # target angles below / above pi/4
def test_one_scale_update_matches_the_formula(labels):
    weight = torch.eye(4)  # class k's weight is basis vector k: cos(x, w_k) = x_k / |x|
    x = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.2, 2.0, -0.3, 0.4], [1.0, -0.5, 1.5, 0.1]])
    y = torch.tensor(labels)
    model = Features(weight).train()
    s0 = float(model.head.s)
    cos = (x / x.norm(dim=1, keepdim=True)).tolist()
    expect = _expected_update(s0, cos, labels)
    loss, logits = AdaCos(TRAINED, None).loss(model, x, y)
    assert float(model.head.s) == pytest.approx(expect, rel=1e-5)
    assert logits.detach() == pytest.approx(expect * torch.tensor(cos), rel=1e-5)
    assert loss.item() == pytest.approx(nn.functional.cross_entropy(expect * torch.tensor(cos), y).item(), rel=1e-5)
    # Class weights are trainable, in model.parameters(), and receive gradients.
    loss.backward()
    assert any(p is model.head.weight for p in model.parameters())
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_scale_not_updated_in_eval_and_floored_when_formula_goes_negative():
    model = Features(torch.eye(2)).eval()
    x, y = torch.tensor([[1.0, -1.0], [2.0, -1.0]]), torch.tensor([0, 0])
    before = float(model.head.s)
    AdaCos(TRAINED, None).loss(model, x, y)
    assert float(model.head.s) == before
    model.train()
    model.head.s.fill_(3.0)
    AdaCos(TRAINED, None).loss(model, x, y)  # C = 2, non-target cosines < 0: B_avg < 1, ln(B_avg) < 0
    assert float(model.head.s) == pytest.approx(MIN_SCALE)


@pytest.mark.parametrize("arch", ["test_resnet", "densenet121"])
def test_adapt_model_swaps_the_linear_classifier(arch):
    model = AdaCos(TRAINED, None).adapt_model(timm.create_model(arch, num_classes=7), 7)
    head = cosine_head(model)
    assert model.get_classifier() is head and not any(type(m) is nn.Linear for m in model.modules())
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and out.abs().max() <= float(head.s) + 1e-5


@pytest.mark.parametrize("classes", [4, 2])
def test_end_to_end_trains_the_scale_only_in_training_and_keeps_reference_weights(make_cfg, classes):
    cfg = make_cfg("adacos", data_options={"classes": classes})
    assert cfg.params["adacos"]["train_weights"] is False  # the default: pytorch-adacos, the KE reference
    run = Run(cfg, show_progress=False)
    head = cosine_head(run.model)
    w0, s0 = head.weight.detach().clone(), float(head.s)
    assert s0 == pytest.approx(initial_scale(classes))
    run.fit(3)  # 3 short epochs: 1 epoch (6 steps) sat at chance for some augmentation draws
    assert torch.equal(head.weight.detach(), w0)  # no step, momentum or weight decay moved a class weight
    assert head.weight.grad is None
    s1 = float(head.s)
    assert s1 >= MIN_SCALE and (s1 != s0 or classes == 2)  # at C = 2 it sits on the floor (see adacos.py)
    assert run.passes[-1]["metrics"]["top1"] > 1 / classes  # the backbone learns to the fixed prototypes
    run.evaluate()
    assert float(head.s) == s1  # evaluation never moves the scale


def test_train_weights_option_trains_the_class_weights(make_cfg):
    cfg = make_cfg("adacos", plugin={"adacos.train_weights": "true"}, data_options={"classes": 4})
    assert cfg.params["adacos"]["train_weights"] is True
    run = Run(cfg, show_progress=False)
    head = cosine_head(run.model)
    w0 = head.weight.detach().clone()
    run.fit(1)
    moved = (head.weight.detach() - w0).abs().amax(dim=1)
    assert bool((moved > 1e-4).all())  # every class's weight row was trained


def test_cosine_head_under_kels_slim_equals_masked_dense():
    """adacos+ke with KELS: the cosine head is a Linear to the split graph, its normalised input
    keeps every channel (normalisation mixes them), and the slim network is exact."""
    import copy

    from kebench.nets.models import create_model
    from kebench.nets.slim import extract_subnetwork
    from kebench.nets.channels import channel_graph
    from kebench.nets.split import SplitMasks, kels_keep
    from methods.adacos import AdaCos, CosineHead

    torch.manual_seed(0)
    model = AdaCos(TRAINED, None).adapt_model(create_model("resnet18", 6), 6).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = channel_graph(model, x)
    head_group = graph.layers["fc"].out_group
    assert graph.groups[head_group].pinned  # the logits: all classes kept
    slim = extract_subnetwork(model, kels_keep(graph, 0.5), x, graph=graph)
    assert isinstance(slim.fc, CosineHead) and slim.fc.weight.shape == (6, 512)  # normalised input kept whole
    assert slim.layer1[0].conv1.weight.shape == (32, 32, 3, 3)  # the rest is halved
    zeroed = copy.deepcopy(model)
    SplitMasks.kels(model, 0.5, graph).zero_reset(zeroed)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), zeroed(x), rtol=1e-5, atol=1e-5)
