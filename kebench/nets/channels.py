"""The channel graph of a model: channel groups (channels that must be kept or dropped together) and
the conv/linear/norm layers that read and write them. Built by tracing one forward pass
(kebench/nets/trace.py); it is the one graph walker KE's splits, structured pruning, slimming and
RePr's BatchNorm lookup use.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kebench.errors import UserError
from kebench.nets.trace import _Tracer, _tensors

@dataclass
class ChannelGroup:
    """Channels that must be kept or dropped together (their indices line up across all tensors).

    producers: conv/linear modules whose output channels are this group, in order.
    consumers: conv/linear modules that read (part of) it; norms: batch-norm modules normalising it.
    pinned: why every channel must be kept (network input/output, a channel-wide op), or None.
    """

    id: str
    size: int
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    pinned: str | None = None


@dataclass
class Layer:
    """A conv/linear/batch-norm module as the graph saw it.

    kind: conv | depthwise | linear | norm. in_group/in_index: for each input channel its group id
    and index inside that group (a concatenation gives several groups). out_group: the group of a
    conv/linear's output channels (depthwise convs and norms write their input's channels).
    """

    name: str
    kind: str
    in_group: list[str]
    in_index: torch.Tensor
    out_group: str | None = None
    #: norms only: for each input channel the conv that wrote it directly (through concatenations
    #: only), else None
    sources: list = field(default_factory=list)


class ChannelGraph:
    """Channel groups of a model and the layers that read and write them (see `channel_graph`)."""

    def __init__(self, groups: dict[str, ChannelGroup], layers: dict[str, Layer]):
        self.groups = groups
        self.layers = layers
        # Every channel of every group gets one slot in a flat vector, so a layer's input channels
        # are one gather away from any per-group keep vector.
        offset, start = {}, 0
        for gid, g in groups.items():
            offset[gid] = start
            start += g.size
        self._slots = {name: torch.tensor([offset[g] for g in info.in_group], dtype=torch.long) + info.in_index
                       for name, info in layers.items()}

    def positions(self, layer: str, group: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Where `group`'s channels sit in `layer`'s input: (positions, index inside the group).

        E.g. the BatchNorm gammas of a group for network slimming: bn.weight[positions] are the
        gammas of group channels `index`.
        """
        info = self.layers[layer]
        pos = torch.tensor([i for i, g in enumerate(info.in_group) if g == group], dtype=torch.long)
        return pos, info.in_index[pos]

    def check_keep(self, keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Validate {group id: kept channel indices} and fill groups not mentioned with 'keep all'."""
        unknown = sorted(set(keep) - set(self.groups))
        if unknown:
            raise UserError(f"keep names channel group(s) {unknown} that the model does not have; "
                            f"valid groups: {', '.join(self.groups)}.")
        full = {}
        for gid, group in self.groups.items():
            if gid not in keep:
                full[gid] = torch.arange(group.size)
                continue
            idx = torch.as_tensor(keep[gid], dtype=torch.long).flatten().cpu()
            if idx.numel() == 0 or idx.min() < 0 or idx.max() >= group.size or len(idx.unique()) != len(idx):
                raise UserError(f"Channel group '{gid}' has {group.size} channels; keep must be distinct "
                                f"indices in [0, {group.size}) and not empty, got {idx.tolist()[:20]}.")
            if group.pinned and len(idx) != group.size:
                raise UserError(f"Channel group '{gid}' must keep all {group.size} channels ({group.pinned}); "
                                f"got {len(idx)}.")
            full[gid] = idx.sort().values
        return full

    def keep_vector(self, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        """All groups' channels in one flat bool vector (True = kept), after `check_keep`."""
        keep = self.check_keep(keep)
        parts = []
        for gid, group in self.groups.items():
            b = torch.zeros(group.size, dtype=torch.bool)
            b[keep[gid]] = True
            parts.append(b)
        return torch.cat(parts)

    def input_keep(self, layer: str, flat_keep: torch.Tensor) -> torch.Tensor:
        """Bool vector over `layer`'s input channels (True = kept), from a `keep_vector`."""
        return flat_keep[self._slots[layer]]

    def output_keep(self, layer: str, flat_keep: torch.Tensor) -> torch.Tensor:
        """Bool vector over `layer`'s output channels (True = kept), from a `keep_vector`."""
        info = self.layers[layer]
        if info.out_group is None:
            return self.input_keep(layer, flat_keep)
        start = 0
        for gid, group in self.groups.items():
            if gid == info.out_group:
                return flat_keep[start:start + group.size]
            start += group.size
        raise KeyError(info.out_group)

    def following_norms(self) -> dict[str, list[tuple[str, int]]]:
        """For every conv: the BatchNorms that normalise its output directly (or through channel
        concatenations, as in DenseNet), as (norm name, offset of the conv's first channel in it)."""
        found: dict[str, list[tuple[str, int]]] = {}
        for name, info in self.layers.items():
            first: dict[str, int] = {}
            for pos, conv in enumerate(info.sources):
                if conv is not None:
                    first.setdefault(conv, pos)
            for conv, pos in first.items():
                found.setdefault(conv, []).append((name, pos))
        return found

    def masks(self, keep: dict[str, torch.Tensor], model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Per conv/linear module: (weight mask, bias mask) of the channels `keep` keeps (bool, CPU)."""
        flat = self.keep_vector(keep)
        out = {}
        for name, info in self.layers.items():
            if info.kind == "norm":
                continue
            module = model.get_submodule(name)
            w = module.weight
            in_keep = self.input_keep(name, flat)
            out_keep = self.output_keep(name, flat)
            if info.kind == "depthwise":
                mask = out_keep.view(-1, *([1] * (w.dim() - 1))).expand(w.shape)
            else:
                shape_o = (-1,) + (1,) * (w.dim() - 1)
                shape_i = (1, -1) + (1,) * (w.dim() - 2)
                mask = out_keep.view(shape_o) & in_keep.view(shape_i)
                mask = mask.expand(w.shape)
            out[name] = (mask.contiguous(), out_keep.clone() if module.bias is not None else None)
        return out




@torch.no_grad()
def channel_graph(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """Trace one eval-mode forward pass of `model` on `example_input` and return its channel groups.

    The input's size matters only where a Linear reads a flattened C x H x W map. Use a batch of 2 or
    more (a batch of 1 makes squeezes ambiguous). The model is left in the mode it was in and is not
    changed (eval mode: batch-norm statistics are not updated, dropout draws no random numbers).
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise UserError("channel_graph needs an example input tensor shaped [batch, channels, ...].")
    tracer = _Tracer(model)
    names = {m: n for n, m in model.named_modules()}

    def enter(mod, _args) -> None:
        tracer.stack.append(names[mod])

    def leave(mod, _args, _out) -> None:  # must return None: a forward hook's result replaces the output
        tracer.stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names] + [m.register_forward_hook(leave) for m in names]
    was_training = model.training
    model.eval()
    x = example_input.clone()
    try:
        tracer.label_input(x)
        with tracer:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    reached = False
    for t in _tensors(out):
        lab = tracer.get(t)
        if lab is not None:
            tracer.pin(lab[0], "network output")
            reached = True
    if not reached:
        raise UserError("The model's output is not computed from its input channels the way kebench can follow; "
                        "cannot build a channel graph.")
    return _finish(tracer)


def _finish(tr: _Tracer) -> ChannelGraph:
    find = tr.uf.find
    ids: dict[int, str] = {}
    groups: dict[str, ChannelGroup] = {}
    for g in range(len(tr.sizes)):
        r = find(g)
        if r not in ids:
            ids[r] = tr.first_name[r]
            groups[ids[r]] = ChannelGroup(id=ids[r], size=tr.sizes[r])
        if g in tr.producers:
            groups[ids[r]].producers.extend(tr.producers[g])
    for g, reason in tr.pinned.items():
        groups[ids[find(g)]].pinned = groups[ids[find(g)]].pinned or reason
    layers = {}
    for name, info in tr.layers.items():
        in_group = [ids[find(g)] for g in info["gid"].tolist()]
        out_group = ids[find(info["out"])] if info["out"] is not None else None
        layers[name] = Layer(name, info["kind"], in_group, info["idx"].clone(), out_group,
                             list(tr.norm_sources.get(name, [])))
        for gid in dict.fromkeys(in_group):
            (groups[gid].norms if info["kind"] == "norm" else groups[gid].consumers).append(name)
    return ChannelGraph(groups, layers)


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> dict[str, ChannelGroup]:
    """{group id: ChannelGroup} of a model: the unit of KELS and of channel pruning (see `channel_graph`)."""
    return channel_graph(model, example_input).groups

