"""Genomes of the evolutionary architecture searches (methods/agevo.py) and the network family they
build, registered with timm as `evonet` (`--arch evonet` is the hand-designed member below).

A genome is a JSON-able dict, a chain of units between a 3x3 stem and a global-average-pooled head:

    {"stem": 16,
     "units": [{"id": 1, "type": "conv", "out": 32, "k": 3, "stride": 1, "skip": false, "concat": false},
               {"id": 2, "type": "pool"},                      # 2x2 max pooling, stride 2
               {"id": 3, "type": "dropout", "p": 0.3}],
     "fc": [{"id": 4, "out": 64}],                             # hidden fully connected layers
     "next_id": 5}

A conv unit is relu(BN(conv(x)) [+ x, or a 1x1 projection of x, when `skip`]), followed by
concatenation with its (average-pooled when strided) input when `concat`. Units keep their id for
life, and a network's parameter names carry it (`units.u7.conv.weight`), so a child finds its
parent's trained weights by name (kebench.nets.morph.inherit) whatever was inserted or removed around them.

MUTATIONS is the mutation set of AG-Evolution (Li et al. 2018) and EIGEN (Ren et al. 2019):
add/remove convolution, alter channel number, alter filter size, alter stride, add/remove dropout,
add/remove pooling, add/remove skip, add/remove concatenate, add/remove fully connected; and
EIGEN-D's gene duplication (`duplicate`: the whole discovered structure, its chain of units, copied after
itself with its weights — the talk's EIGEN -> EIGEN-D parameter count doubling, 1.2 M -> 2.6 M;
`duplicate_segment`: kebench's earlier reading, a copy of a 1-3 unit segment).
"""
from __future__ import annotations

import copy

import torch
from timm.models import register_model
from torch import nn
from torch.nn import functional as F

from kebench.nets.archs import TimmHead, timm_kwargs

MUTATIONS = ("add_conv", "remove_conv", "alter_channels", "alter_filter", "alter_stride",
             "add_dropout", "remove_dropout", "add_pool", "remove_pool", "add_skip", "remove_skip",
             "add_concat", "remove_concat", "add_fc", "remove_fc")
DUPLICATE = "duplicate"
DUPLICATE_SEGMENT = "duplicate_segment"
DUPLICATIONS = (DUPLICATE, DUPLICATE_SEGMENT)
#: Bounds that keep every genome buildable and small enough for a CPU search.
LIMITS = {"min_channels": 4, "max_channels": 256, "max_units": 16, "max_down": 4, "max_fc": 2,
          "kernels": (1, 3, 5), "dropout": (0.1, 0.2, 0.3, 0.4, 0.5), "fc_widths": (32, 64, 128),
          "max_segment": 3}
#: The genome every search starts from, a "poorly initialised" structure: the stem, one 3x3 conv and
#: the classifier (EIGEN and AG-Evolution start from single-layer networks).
MINIMAL = {"stem": 16, "units": [{"id": 1, "type": "conv", "out": 16, "k": 3, "stride": 1, "skip": False,
                                  "concat": False}], "fc": [], "next_id": 2}
#: `--arch evonet`: a hand-designed member (a small VGG/ResNet-like net of 0.11 M parameters).
HAND_DESIGNED = {"stem": 16, "units": [
    {"id": 1, "type": "conv", "out": 32, "k": 3, "stride": 1, "skip": False, "concat": False},
    {"id": 2, "type": "pool"},
    {"id": 3, "type": "conv", "out": 64, "k": 3, "stride": 1, "skip": False, "concat": False},
    {"id": 4, "type": "conv", "out": 64, "k": 3, "stride": 1, "skip": True, "concat": False},
    {"id": 5, "type": "pool"},
    {"id": 6, "type": "conv", "out": 96, "k": 3, "stride": 1, "skip": False, "concat": False},
    {"id": 7, "type": "dropout", "p": 0.2}], "fc": [], "next_id": 8}


# ---------------------------------------------------------------------------- the network
class ConvUnit(nn.Module):
    def __init__(self, cin: int, gene: dict):
        super().__init__()
        k, s, out = gene["k"], gene["stride"], gene["out"]
        self.stride, self.skip, self.concat = s, gene["skip"], gene["concat"]
        self.conv = nn.Conv2d(cin, out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(out)
        self.proj = (nn.Sequential(nn.Conv2d(cin, out, 1, s, bias=False), nn.BatchNorm2d(out))
                     if self.skip and (cin != out or s != 1) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.skip:
            y = y + (x if self.proj is None else self.proj(x))
        y = torch.relu(y)
        if self.concat:
            y = torch.cat([y, x if self.stride == 1 else F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)], 1)
        return y


def unit_channels(genome: dict) -> list[int]:
    """Channels entering each unit, then the channels the head receives (len(units) + 1 values)."""
    c, out = genome["stem"], []
    for u in genome["units"]:
        out.append(c)
        if u["type"] == "conv":
            c = u["out"] + (c if u["concat"] else 0)
    return out + [c]


class EvoNet(TimmHead, nn.Module):
    """The network a genome describes, with timm's head interface (forward_features/forward_head)."""

    def __init__(self, genome: dict | None = None, num_classes: int = 1000, in_chans: int = 3, **_):
        super().__init__()
        self.genome = copy.deepcopy(genome or HAND_DESIGNED)
        check(self.genome)
        g = self.genome
        self.stem = nn.Sequential(nn.Conv2d(in_chans, g["stem"], 3, 1, 1, bias=False), nn.BatchNorm2d(g["stem"]),
                                  nn.ReLU(inplace=True))
        channels = unit_channels(g)
        units = {}
        for u, cin in zip(g["units"], channels):
            units[f"u{u['id']}"] = (ConvUnit(cin, u) if u["type"] == "conv" else nn.MaxPool2d(2, 2, ceil_mode=True)
                                    if u["type"] == "pool" else nn.Dropout(u["p"]))
        self.units = nn.ModuleDict(units)
        self.order = [f"u{u['id']}" for u in g["units"]]
        fcs, c = {}, channels[-1]
        for f in g["fc"]:
            fcs[f"f{f['id']}"] = nn.Linear(c, f["out"])
            c = f["out"]
        self.fcs = nn.ModuleDict(fcs)
        self.num_features = c
        self.fc = nn.Linear(c, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.order:
            x = self.units[name](x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        for layer in self.fcs.values():
            x = torch.relu(layer(x))
        return x if pre_logits else self.fc(x)


@register_model
def evonet(pretrained: bool = False, genome: dict | None = None, **kwargs) -> EvoNet:
    """A genome-built network (kebench.nets.genome); without `genome`, the hand-designed member."""
    return EvoNet(genome, **timm_kwargs(kwargs))


# ---------------------------------------------------------------------------- genomes
def check(genome: dict) -> None:
    """Raise ValueError for a genome the family cannot build (ids, types, bounds)."""
    ids = [u["id"] for u in genome["units"]] + [f["id"] for f in genome["fc"]]
    if len(set(ids)) != len(ids) or any(i >= genome["next_id"] for i in ids):
        raise ValueError(f"genome ids must be unique and below next_id: {ids}, next_id {genome['next_id']}")
    for u in genome["units"]:
        if u["type"] == "conv":
            if u["k"] not in LIMITS["kernels"] or u["stride"] not in (1, 2) or u["out"] < 1:
                raise ValueError(f"bad conv unit {u}")
        elif u["type"] == "dropout":
            if not 0 <= u["p"] < 1:
                raise ValueError(f"bad dropout unit {u}")
        elif u["type"] != "pool":
            raise ValueError(f"unknown unit type {u['type']!r}")


def describe(genome: dict) -> str:
    """A compact text form: `16 | c32k3 P c64k3s2+ c64k1& D.3 | fc64` (+ skip, & concatenate)."""
    parts = []
    for u in genome["units"]:
        if u["type"] == "conv":
            parts.append(f"c{u['out']}k{u['k']}" + ("s2" if u["stride"] == 2 else "") + ("+" if u["skip"] else "")
                         + ("&" if u["concat"] else ""))
        else:
            parts.append("P" if u["type"] == "pool" else f"D{u['p']:g}".replace("0.", "."))
    head = " ".join(f"fc{f['out']}" for f in genome["fc"])
    return f"{genome['stem']} | {' '.join(parts) or '-'} | {head or '-'}"


def downsamplings(genome: dict) -> int:
    return sum(1 for u in genome["units"] if u["type"] == "pool" or (u["type"] == "conv" and u["stride"] == 2))


def _pick(seq, gen: torch.Generator):
    return seq[int(torch.randint(len(seq), (1,), generator=gen))]


def _new_id(g: dict) -> int:
    g["next_id"] += 1
    return g["next_id"] - 1


def _convs(g: dict, **where) -> list[int]:
    return [i for i, u in enumerate(g["units"]) if u["type"] == "conv" and all(u[k] == v for k, v in where.items())]


def _clamp(c: int) -> int:
    return max(LIMITS["min_channels"], min(LIMITS["max_channels"], c))


def applicable(g: dict, op: str) -> bool:
    """Whether mutation `op` can change genome g within LIMITS."""
    units, n_conv = g["units"], len(_convs(g))
    room = len(units) < LIMITS["max_units"]
    if op == "add_conv":
        return room
    if op == "remove_conv":
        return n_conv >= 1
    if op == "alter_channels":
        return n_conv >= 1
    if op in ("alter_filter",):
        return n_conv >= 1
    if op == "alter_stride":
        return bool(_convs(g, stride=2)) or (n_conv >= 1 and downsamplings(g) < LIMITS["max_down"])
    if op == "add_dropout":
        return room
    if op == "remove_dropout":
        return any(u["type"] == "dropout" for u in units)
    if op == "add_pool":
        return room and downsamplings(g) < LIMITS["max_down"]
    if op == "remove_pool":
        return any(u["type"] == "pool" for u in units)
    if op in ("add_skip", "add_concat"):
        return bool(_convs(g, **{op[4:]: False}))
    if op in ("remove_skip", "remove_concat"):
        return bool(_convs(g, **{op[7:]: True}))
    if op == "add_fc":
        return len(g["fc"]) < LIMITS["max_fc"]
    if op == "remove_fc":
        return bool(g["fc"])
    if op == DUPLICATE:
        return n_conv >= 1 and 2 * len(units) <= LIMITS["max_units"]
    if op == DUPLICATE_SEGMENT:
        return n_conv >= 1 and len(units) < LIMITS["max_units"]
    raise ValueError(f"unknown mutation {op!r}")


def mutate(genome: dict, op: str, gen: torch.Generator) -> tuple[dict, dict]:
    """Apply mutation `op` (applicable to genome) to a copy: (child genome, birth note).

    The note says what changed: {"op", "text", "widened": (unit id, old width) for a channel increase,
    "inserted": unit id of an added conv, "copied": {new id: source id} for a duplication}.
    """
    g = copy.deepcopy(genome)
    units = g["units"]
    note = {"op": op}
    channels = unit_channels(g)
    if op == "add_conv":
        pos = int(torch.randint(len(units) + 1, (1,), generator=gen))
        uid = _new_id(g)
        units.insert(pos, {"id": uid, "type": "conv", "out": channels[pos], "k": 3, "stride": 1,
                           "skip": False, "concat": False})
        note.update(inserted=uid, text=f"add conv u{uid} ({channels[pos]} ch) at {pos}")
    elif op == "remove_conv":
        i = _pick(_convs(g), gen)
        note["text"] = f"remove conv u{units[i]['id']}"
        del units[i]
    elif op == "alter_channels":
        u = units[_pick(_convs(g), gen)]
        old = u["out"]
        new = _clamp(old * 2 if bool(torch.randint(2, (1,), generator=gen)) else old // 2)
        if new == old:  # at a bound: go the other way
            new = _clamp(old // 2 if new >= old else old * 2)
        u["out"] = new
        note.update(text=f"channels u{u['id']} {old}->{new}", **({"widened": (u["id"], old)} if new > old else {}))
    elif op == "alter_filter":
        u = units[_pick(_convs(g), gen)]
        old = u["k"]
        u["k"] = _pick([k for k in LIMITS["kernels"] if k != old], gen)
        note["text"] = f"filter u{u['id']} {old}x{old}->{u['k']}x{u['k']}"
    elif op == "alter_stride":
        choices = _convs(g, stride=2) + (_convs(g, stride=1) if downsamplings(g) < LIMITS["max_down"] else [])
        u = units[_pick(sorted(choices), gen)]
        u["stride"] = 3 - u["stride"]
        note["text"] = f"stride u{u['id']} -> {u['stride']}"
    elif op in ("add_dropout", "add_pool"):
        pos = int(torch.randint(len(units) + 1, (1,), generator=gen))
        uid = _new_id(g)
        unit = {"id": uid, "type": "pool"} if op == "add_pool" else {"id": uid, "type": "dropout",
                                                                      "p": _pick(LIMITS["dropout"], gen)}
        units.insert(pos, unit)
        note["text"] = f"{op.replace('_', ' ')} u{uid} at {pos}"
    elif op in ("remove_dropout", "remove_pool"):
        kind = op[7:]
        i = _pick([i for i, u in enumerate(units) if u["type"] == kind], gen)
        note["text"] = f"remove {kind} u{units[i]['id']}"
        del units[i]
    elif op in ("add_skip", "remove_skip", "add_concat", "remove_concat"):
        add, key = op.startswith("add"), op.split("_")[1]
        u = units[_pick(_convs(g, **{key: not add}), gen)]
        u[key] = add
        note["text"] = f"{'add' if add else 'remove'} {key} u{u['id']}"
    elif op == "add_fc":
        pos = int(torch.randint(len(g["fc"]) + 1, (1,), generator=gen))
        uid = _new_id(g)
        g["fc"].insert(pos, {"id": uid, "out": _pick(LIMITS["fc_widths"], gen)})
        note["text"] = f"add fc f{uid} ({g['fc'][pos]['out']}) at {pos}"
    elif op == "remove_fc":
        i = int(torch.randint(len(g["fc"]), (1,), generator=gen))
        note["text"] = f"remove fc f{g['fc'][i]['id']}"
        del g["fc"][i]
    elif op in DUPLICATIONS:
        if op == DUPLICATE:  # the whole structure: every unit, the copy appended after the original
            start, length = 0, len(units)
        else:
            start = _pick(_convs(g), gen)
            room = LIMITS["max_units"] - len(units)
            length = min(int(torch.randint(1, LIMITS["max_segment"] + 1, (1,), generator=gen)), len(units) - start, room)
        copied = _duplicate(g, start, length)
        note.update(copied=copied, text=f"duplicate {' '.join(f'u{v}' for v in copied.values())} as "
                                        f"{' '.join(f'u{k}' for k in copied)}")
    else:
        raise ValueError(f"unknown mutation {op!r}")
    check(g)
    return g, note


def _duplicate(g: dict, start: int, length: int) -> dict[int, int]:
    """Insert a copy of units[start:start + length] right after them, new ids; {new id: source id}.
    The copy keeps the structure; strides and pools beyond the down-sampling budget become 1 / are
    left out (a network of `max_down` down-samplings has no room for more)."""
    units = g["units"]
    segment = copy.deepcopy(units[start:start + length])
    spare = LIMITS["max_down"] - downsamplings(g)
    copied, kept = {}, []
    for u in segment:
        if u["type"] == "pool" or (u["type"] == "conv" and u["stride"] == 2):
            if spare <= 0:
                if u["type"] == "pool":
                    continue
                u["stride"] = 1
            else:
                spare -= 1
        old, u["id"] = u["id"], _new_id(g)
        copied[u["id"]] = old
        kept.append(u)
    units[start + length:start + length] = kept
    return copied


# ---------------------------------------------------------------------------- weights at birth
def consumer_of(genome: dict, uid: int) -> str | None:
    """Parameter prefix of the layer that alone reads conv unit uid's output channels (through
    pools and dropouts), when Net2WiderNet can widen uid exactly; else None."""
    units = genome["units"]
    i = next(j for j, u in enumerate(units) if u["id"] == uid)
    if units[i]["skip"] or units[i]["concat"]:
        return None
    for u in units[i + 1:]:
        if u["type"] == "conv":
            return None if (u["skip"] or u["concat"]) else f"units.u{u['id']}.conv"
    return f"fcs.f{genome['fc'][0]['id']}" if genome["fc"] else "fc"


@torch.no_grad()
def give_birth(child: nn.Module, parent: nn.Module, note: dict, gen: torch.Generator) -> dict:
    """Make a freshly built child inherit its parent's trained weights (kebench.nets.morph.inherit) and,
    where the mutation allows, start computing exactly its parent's function:

    - a widened conv unit gets Net2WiderNet's copies of its parent's units (kebench.nets.morph.remap_units,
      the rule neuroevo uses), when a single layer reads its output;
    - an inserted conv (3x3, same channels, stride 1, input >= 0 after a ReLU) starts as the identity
      in eval mode (Net2DeeperNet): a Dirac kernel and a BN that undoes its running statistics;
    - a duplicated structure (or segment) starts as a copy of the original's weights (EIGEN-D's gene
      duplication; where the copy's input width differs, the overlapping slice).
    Returns inherit's counts plus "preserved" (the mutation was applied function-preservingly).
    """
    from kebench.nets.morph import inherit, remap_units, widen_index

    rename = {}
    for name in child.state_dict():
        for new, old in (note.get("copied") or {}).items():
            prefix = f"units.u{new}."
            if name.startswith(prefix):
                rename[name] = f"units.u{old}." + name[len(prefix):]
    counts = inherit(child, parent, rename)
    preserved = False
    if "widened" in note:
        uid, old = note["widened"]
        target = consumer_of(child.genome, uid)
        if target is not None:
            unit = copy.deepcopy(parent.units[f"u{uid}"])
            consumer = copy.deepcopy(parent.get_submodule(target))
            new = child.units[f"u{uid}"].conv.out_channels
            index, share = widen_index(old, new - old, gen)
            remap_units(unit.conv, unit.bn, consumer, index, share)
            child.units[f"u{uid}"].load_state_dict(unit.state_dict())
            child.get_submodule(target).weight.copy_(consumer.weight)
            preserved = True
    elif "inserted" in note:
        unit = child.units[f"u{note['inserted']}"]
        nn.init.dirac_(unit.conv.weight)
        unit.bn.running_mean.zero_()
        unit.bn.running_var.fill_(1.0)
        unit.bn.weight.fill_((1.0 + unit.bn.eps) ** 0.5)
        unit.bn.bias.zero_()
        preserved = True
    return {**counts, "preserved": preserved}
