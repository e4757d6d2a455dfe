"""Physical sub-networks: the slim KELS fit-hypothesis (and any channel selection), with its cost.

The general tool is `extract_subnetwork(model, keep, example_input)`: given, for some channel groups
of `model` (see `channel_groups`), the indices of the channels to keep, it returns a deep copy of the
model in which every conv, linear and batch-norm module is physically smaller. Groups not named in
`keep` keep all their channels; pinned groups (network input and output) must keep all.

    from kebench.nets.slim import channel_groups, extract_subnetwork
    x = torch.zeros(2, 3, 224, 224)
    groups = channel_groups(model, x)                  # {"conv1": ChannelGroup(size=64, ...), ...}
    keep = {"layer1.0.conv1": torch.tensor([0, 5, 9])}  # e.g. the filters with the largest L1 norm
    small = extract_subnetwork(model, keep, x)         # plain nn.Module, same forward code

A group's channels are written by its `producers` (convs/linears whose output *is* the group; all of
them are sliced alike, which is how residual adds stay aligned) and read by its `consumers` and
`norms` (possibly as one segment of a concatenation; `graph.positions(layer, group)` says where).
The KELS slim network keeps the first ceil(s_r*C) channels of every group: `slim_network`.

Invariant (tested): in eval mode the sub-network's output equals the dense network's output after
zeroing every weight outside the kept channels. A dropped channel still carries a BatchNorm bias
in the dense network, but every kernel that reads it into a kept channel is zero, so no kept
channel ever sees it.

The result holds no kebench masks and the model's own classes: save it with `save_slim` (a whole
pickled module, `torch.load(path, weights_only=False)` gives it back wherever timm/torchvision and,
for kebench's GoogLeNet or custom heads, kebench are importable).

Cost: parameters count real parameters only; FLOPs come from torch.utils.flop_counter, which
counts one multiply-add as 2 FLOPs; latency is the median wall time of single-image forward passes
on the device at hand.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kebench.errors import UserError
from kebench.nets.channels import ChannelGraph, channel_graph, channel_groups  # noqa: F401  (re-exported)
from kebench.nets.split import kels_keep  # noqa: F401  (re-exported)

LATENCY_WARMUP = 5  # untimed passes (allocator, cudnn autotune)
LATENCY_ITERS = 30  # timed passes; the median is reported


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=like.requires_grad)


@torch.no_grad()
def extract_subnetwork(model: nn.Module, keep: dict[str, torch.Tensor], example_input: torch.Tensor | None = None,
                       *, graph: ChannelGraph | None = None) -> nn.Module:
    """A physically smaller copy of `model` keeping, per channel group, the channels in `keep`.

    keep: {group id: LongTensor of channel indices to keep} (ids from `channel_groups`; groups left
    out keep everything). Pass the `example_input` used to trace the model, or a prebuilt `graph`.
    The copy is in the model's train/eval mode, on its device; `num_features` follows the classifier.
    """
    if graph is None:
        if example_input is None:
            raise UserError("extract_subnetwork needs an example_input (or a channel graph) to find the channel groups.")
        graph = channel_graph(model, example_input)
    flat = graph.keep_vector(keep)
    small = copy.deepcopy(model)
    for name, info in graph.layers.items():
        m = small.get_submodule(name)
        i = graph.input_keep(name, flat).nonzero().flatten().to(m.weight.device if m.weight is not None else "cpu")
        if info.kind == "norm":
            _slice_norm(m, i)
            continue
        o = graph.output_keep(name, flat).nonzero().flatten().to(m.weight.device)
        if info.kind == "depthwise":
            m.weight = _param(m.weight[o], m.weight)
            m.in_channels = m.out_channels = m.groups = len(o)
        elif info.kind == "conv":
            m.weight = _param(m.weight[o][:, i], m.weight)
            m.in_channels, m.out_channels = len(i), len(o)
        else:
            m.weight = _param(m.weight[o][:, i], m.weight)
            m.in_features, m.out_features = len(i), len(o)
        if m.bias is not None:
            m.bias = _param(m.bias[o], m.bias)
    head = small.get_classifier() if hasattr(small, "get_classifier") else None
    if isinstance(head, nn.Linear) and getattr(small, "head_hidden_size", None):
        small.head_hidden_size = head.in_features  # the classifier reads a hidden head layer (CIFAR VGG-16)
    elif isinstance(head, nn.Linear) and getattr(small, "num_features", None) == getattr(model.get_classifier(), "in_features", None):
        small.num_features = head.in_features
    if example_input is not None:
        _check_runs(small, example_input)
    return small


def _slice_norm(m: _BatchNorm, i: torch.Tensor) -> None:
    if m.weight is not None:
        m.weight = _param(m.weight[i], m.weight)
        m.bias = _param(m.bias[i], m.bias)
    if m.running_mean is not None:
        m.running_mean = m.running_mean[i].clone()
        m.running_var = m.running_var[i].clone()
    m.num_features = len(i)


def _check_runs(small: nn.Module, x: torch.Tensor) -> None:
    was = small.training
    small.eval()
    try:
        small(x)
    except RuntimeError as exc:
        raise UserError(f"The extracted sub-network does not run ({exc}); its forward code seems to depend on "
                        f"channel counts kebench cannot see.") from None
    finally:
        small.train(was)


def slim_network(model: nn.Module, rate: float, example_input: torch.Tensor | None = None,
                 *, graph: ChannelGraph | None = None) -> nn.Module:
    """The KELS slim fit-hypothesis: the first ceil(rate*C) channels of every channel group."""
    graph = graph or channel_graph(model, example_input)
    return extract_subnetwork(model, kels_keep(graph, rate), example_input, graph=graph)


def save_slim(model: nn.Module, path) -> None:
    """Save a sub-network as a whole module on the CPU (atomic); reload with `load_slim` or torch.load."""
    from kebench.run.results import save_torch

    cpu = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
    save_torch(path, cpu)


def load_slim(path, map_location="cpu") -> nn.Module:
    """Load a module written by `save_slim`. It is unpickled: load only files you trust."""
    return torch.load(path, map_location=map_location, weights_only=False)


# ---------------------------------------------------------------------------------------------- cost
@torch.inference_mode()
def measure_latency(models: dict[str, nn.Module], input_shape: tuple[int, ...], device, *, autocast=None,
                    warmup: int | None = None, iters: int | None = None) -> dict[str, float]:
    """Median milliseconds of one eval-mode forward pass on a zero batch of `input_shape`, per model.

    The models take turns pass by pass, so a busy machine slows them alike and their ratio stays
    meaningful. warmup/iters default to LATENCY_WARMUP/LATENCY_ITERS (read at call time).
    """
    import contextlib

    warmup = LATENCY_WARMUP if warmup is None else warmup
    iters = LATENCY_ITERS if iters is None else iters
    device = torch.device(device)
    modes = {k: m.training for k, m in models.items()}
    x = torch.zeros(input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in models}
    try:
        with autocast or contextlib.nullcontext():
            for k in range(warmup + iters):
                for key, m in models.items():
                    m.eval()
                    sync()
                    t0 = time.perf_counter()
                    m(x)
                    sync()
                    if k >= warmup:
                        times[key].append(time.perf_counter() - t0)
    finally:
        for key, m in models.items():
            m.train(modes[key])
    return {key: statistics.median(t) * 1e3 for key, t in times.items()}


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Each conv / linear / batch-norm module -> its weight shape (num_features for an affine-free norm)."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            shapes[name] = list(m.weight.shape)
        elif isinstance(m, _BatchNorm):
            shapes[name] = list(m.weight.shape) if m.weight is not None else [m.num_features]
    return shapes


def profile(model: nn.Module, rate: float, resolution: int, in_chans: int, device="cpu", latency: bool = True) -> dict:
    """Dense vs KELS-slim: params, FLOPs (1 multiply-add = 2 FLOPs), layer shapes, latency (ms)."""
    from kebench.nets.cost import forward_flops
    from kebench.nets.models import count_params

    device = torch.device(device)
    model = model.to(device).eval()
    shape = (1, in_chans, resolution, resolution)
    x = torch.zeros((2,) + shape[1:], device=device)
    slim = slim_network(model, rate, x)
    models = {"dense": model, "slim": slim}
    out = {k: {"params": count_params(m), "flops": forward_flops(m, shape, device), "layers": layer_shapes(m)}
           for k, m in models.items()}
    if latency:
        for key, ms in measure_latency(models, shape, device).items():
            out[key]["latency_ms"] = ms
    return out
