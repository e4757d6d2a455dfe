"""Channel tracing: one eval-mode forward pass under a `TorchFunctionMode` that labels every channel
(dim 1) of every activation with (group, index). kebench/nets/channels.py turns the labels into the
`ChannelGraph` that KE's KELS split and structured pruning both use.

Channel groups come from the model's graph, never from per-architecture tables. `channel_graph`
runs one eval-mode forward pass under a `TorchFunctionMode` and labels every channel of every
activation with (group, index):

* a conv/linear output opens a new group (one per module, even if it is called twice);
* a residual add/mul of two activations *merges* their groups (the channels must stay aligned);
* a concatenation along channels yields a tensor made of several groups (segments);
* zero channels padded onto an activation (a parameter-free residual shortcut) pin the padded
  group and the group it is added to: their channels stay, the layers between them are prunable;
* BatchNorm, activations, pooling, dropout and flatten carry the labels through;
* the network input and whatever reaches the network output (logits, embeddings) are *pinned*:
  all their channels are kept. So the first conv keeps its RGB inputs and the last Linear keeps
  all outputs (classifier or embedding), with no special case for either.

Running the real forward pass (instead of `torch.fx` symbolic tracing) handles models whose
Python code branches on shapes, such as timm's VGG head. An op it cannot reason about (attention,
LayerNorm over permuted tensors, grouped convolution) raises a `UserError` naming the op and module.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from kebench.errors import UserError

INPUT_GROUP = "input"

# Ops that act on each channel separately and keep dim 1 as the channel dim.
_CHANNELWISE = {
    "relu", "relu6", "leaky_relu", "gelu", "silu", "sigmoid", "hardsigmoid", "hardswish", "hardtanh", "elu",
    "selu", "celu", "mish", "softplus", "tanh", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "clamp", "clip", "clamp_min", "clamp_max", "neg", "abs", "exp", "sqrt", "rsqrt",
    "pow", "square", "contiguous", "clone", "detach", "to", "float", "half", "bfloat16", "double", "type",
    "type_as", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "lp_pool1d", "lp_pool2d", "interpolate", "upsample", "upsample_nearest",
    "upsample_bilinear", "requires_grad",
}
# Elementwise ops of two operands: channel-aligned operands have their groups merged.
_BINARY = {"add", "sub", "mul", "div", "true_divide", "truediv", "rsub", "radd", "rmul", "rtruediv", "iadd",
           "isub", "imul", "itruediv", "idiv", "maximum", "minimum"}
_REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp"}
_CHANNEL_NORMALISE = {"softmax", "log_softmax", "normalize"}
_IGNORED = {"dim", "size", "numel", "get", "_assert", "is_floating_point", "is_complex", "stride",
            "data_ptr", "element_size", "is_contiguous", "_has_compatible_shallow_copy_type"}


def _op_name(func) -> str:
    name = getattr(func, "__name__", str(func))
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)  # the older group names the merged one
            self.parent[hi] = lo
        return self.find(a)


class _Tracer(TorchFunctionMode):
    """Labels the channels (dim 1) of every activation with (group, index) during one forward pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.uf = _UnionFind()
        self.sizes: list[int] = []
        self.first_name: list[str] = []
        self.pinned: dict[int, str] = {}
        self.producers: dict[int, list[str]] = {}
        self.layout: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # id -> (t, gid, idx)
        # The conv that wrote each channel of a tensor *directly* (kept through channel concatenations
        # only): a BatchNorm reading it normalises that conv's output (RePr's lookup).
        self.written: dict[int, tuple[torch.Tensor, list]] = {}  # id -> (t, [conv name | None per channel])
        self.norm_sources: dict[str, list] = {}
        self.layers: dict[str, dict] = {}
        self.module_group: dict[str, int] = {}
        self.stack: list[str] = []
        self.owner: dict[int, tuple[str, nn.Module]] = {}
        self._derived: list[torch.Tensor] = []
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, _BatchNorm)):
                for t in (getattr(m, "weight", None), getattr(m, "running_mean", None)):
                    if t is not None:
                        self.owner[id(t)] = (name, m)

    # -------------------------------------------------------------- helpers
    def where(self) -> str:
        return f" (in module '{self.stack[-1]}')" if self.stack and self.stack[-1] else ""

    def new_group(self, size: int, name: str, pinned: str | None = None) -> int:
        g = self.uf.add()
        self.sizes.append(size)
        self.first_name.append(name)
        if pinned:
            self.pinned[g] = pinned
        return g

    def get(self, t):
        if isinstance(t, torch.Tensor) and id(t) in self.layout:
            entry = self.layout[id(t)]
            if entry[0] is t:
                return entry[1], entry[2]
        return None

    def set(self, t: torch.Tensor, gid: torch.Tensor, idx: torch.Tensor) -> None:
        self.layout[id(t)] = (t, gid, idx)

    def writers(self, t) -> list:
        entry = self.written.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0] is t else [None] * t.shape[1]

    def label_input(self, x: torch.Tensor) -> None:
        g = self.new_group(x.shape[1], INPUT_GROUP, pinned="network input")
        self.set(x, torch.full((x.shape[1],), g, dtype=torch.long), torch.arange(x.shape[1]))

    def pin(self, gid: torch.Tensor, reason: str) -> None:
        for g in set(gid.tolist()):
            self.pinned.setdefault(self.uf.find(g), reason)

    def align(self, a, b, op: str) -> None:
        """Merge the groups of two channel-aligned operands (residual add, SE gating)."""
        (ga, ia), (gb, ib) = a, b
        if not torch.equal(ia, ib):
            raise UserError(f"Op '{op}'{self.where()} combines activations whose channels come from "
                            f"different channel layouts; kebench cannot slim this model.")
        for x, y in set(zip(ga.tolist(), gb.tolist())):
            if self.sizes[self.uf.find(x)] != self.sizes[self.uf.find(y)]:
                raise UserError(f"Op '{op}'{self.where()} adds a {self.sizes[self.uf.find(x)]}-channel group to "
                                f"a {self.sizes[self.uf.find(y)]}-channel one; kebench cannot slim this model.")
            self.uf.union(x, y)

    def unsupported(self, op: str, detail: str = "") -> UserError:
        return UserError(
            f"kebench cannot follow channels through op '{op}'{self.where()}{': ' + detail if detail else ''}. "
            f"KELS and the slim network need a CNN whose channels stay in dim 1 and meet only in "
            f"convolutions, linear layers, batch norms, elementwise ops, residual adds and concatenations "
            f"(ResNet, DenseNet, VGG, GoogLeNet, MobileNet, EfficientNet, ...). Use --split wels, which "
            f"needs no channel graph, for other models.")

    # -------------------------------------------------------------- the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _op_name(func)
        if name in _IGNORED or name == "get":
            return out
        tracked = [a for a in _flat(args, kwargs) if self.get(a) is not None]
        if not tracked:
            self._derive_owner(args, kwargs, out)
            return out
        try:
            self._dispatch(name, out, args, kwargs)
        except (IndexError, KeyError, TypeError, AttributeError, ValueError) as exc:  # an unusual call signature
            raise self.unsupported(name, f"unexpected arguments ({type(exc).__name__}: {exc})") from None
        return out

    def _derive_owner(self, args, kwargs, out) -> None:
        """A same-shaped tensor computed from one layer's weight alone (e.g. AdaCos's normalised class
        weights, a dtype cast) still belongs to that layer when it reaches F.linear / conv."""
        owners = {id(a): self.owner[id(a)] for a in _flat(args, kwargs) if isinstance(a, torch.Tensor) and id(a) in self.owner}
        if len(owners) == 1 and isinstance(out, torch.Tensor):
            src = next(a for a in _flat(args, kwargs) if isinstance(a, torch.Tensor) and id(a) in owners)
            if out.shape == src.shape and id(out) not in self.owner:
                self.owner[id(out)] = owners[id(src)]
                self._derived.append(out)  # keep it alive so its id is not reused during the trace

    def _dispatch(self, name, out, args, kwargs) -> None:
        handler = getattr(self, f"_op_{name}", None)
        if handler is not None:
            handler(out, args, kwargs)
        elif name in _CHANNELWISE:
            self._passthrough(name, out, args)
        elif name in _BINARY:
            self._binary(name, out, args, kwargs)
        elif name in _REDUCE:
            self._reduce(name, out, args, kwargs)
        elif name in _CHANNEL_NORMALISE:
            self._normalise(name, out, args, kwargs)
        elif name in ("conv1d", "conv2d", "conv3d"):
            self._conv(name, out, args, kwargs)
        elif name in ("cat", "concat", "concatenate"):
            self._cat(name, out, args, kwargs)
        elif isinstance(out, torch.Tensor) or (isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out)):
            raise self.unsupported(name)

    def _passthrough(self, name, out, args):
        src = self.get(args[0])
        if src is None:
            raise self.unsupported(name, "its first operand is not an activation")
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[:2] != args[0].shape[:2]:
            raise self.unsupported(name, "it changes the batch or channel dimension")
        self.set(out, *src)

    def _binary(self, name, out, args, kwargs):
        operands = [args[0], args[1] if len(args) > 1 else kwargs.get("other")]
        labelled = [(o, self.get(o)) for o in operands]
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            raise self.unsupported(name, "its result has no channel dimension")
        carried = []
        for o, lab in labelled:
            if lab is not None:
                if o.dim() == out.dim() and o.shape[1] == out.shape[1]:
                    carried.append(lab)
                elif not (o.dim() == out.dim() and o.shape[1] == 1):
                    raise self.unsupported(name, "an activation is broadcast across channels")
            elif isinstance(o, torch.Tensor) and o.numel() > 1:
                shape = (1,) * (out.dim() - o.dim()) + tuple(o.shape)
                if shape[1] > 1:
                    raise self.unsupported(name, "a fixed per-channel tensor that kebench cannot slice is combined "
                                                 "with an activation")
        if not carried:
            raise self.unsupported(name)
        if len(carried) == 2:
            self.align(carried[0], carried[1], name)
        self.set(out, *carried[0])

    def _dims(self, args, kwargs, ndim, default=None):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else default)
        if dim is None:
            return None
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        return {d % ndim for d in dims}

    def _reduce(self, name, out, args, kwargs):
        x = args[0]
        dims = self._dims(args, kwargs, x.dim())
        if (dims is not None and not dims & {0, 1} and isinstance(out, torch.Tensor) and out.dim() >= 2
                and out.shape[:2] == x.shape[:2]):
            self.set(out, *self.get(x))  # spatial pooling (e.g. global average pooling)
            return
        self.pin(self.get(x)[0], f"reduced over channels by '{name}'{self.where()}")

    def _normalise(self, name, out, args, kwargs):
        x = args[0]
        default = 1 if name == "normalize" else None
        if name == "normalize" and len(args) > 2:
            dims = {args[2] % x.dim()}
        elif name == "normalize":
            dims = {kwargs.get("dim", default) % x.dim()}
        else:
            dims = self._dims(args, kwargs, x.dim())
        if dims is None or 1 in dims:
            self.pin(self.get(x)[0], f"normalised across channels by '{name}'{self.where()}")
        self.set(out, *self.get(x))

    def _cat(self, name, out, args, kwargs):
        tensors = list(args[0])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) % out.dim()
        labs = [self.get(t) for t in tensors]
        if dim != 1:
            if any(lab is None for lab in labs):
                raise self.unsupported(name, "activations are concatenated with other tensors")
            for lab in labs[1:]:
                self.align(labs[0], lab, name)
            self.set(out, *labs[0])
            return
        if any(lab is None for lab in labs):
            raise self.unsupported(name, "an activation is concatenated with a tensor that is not one")
        self.set(out, torch.cat([lab[0] for lab in labs]), torch.cat([lab[1] for lab in labs]))
        writers = [w for x in tensors for w in self.writers(x)]
        if any(writers):
            self.written[id(out)] = (out, writers)

    def _op_flatten(self, out, args, kwargs):
        x = args[0]
        start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0) % max(x.dim(), 1)
        end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1) % max(x.dim(), 1)
        self._reshape("flatten", out, x, keeps_channels=start >= 2 or end < 1,
                      flattens=start == 1 and end == x.dim() - 1)

    def _op_view(self, out, args, kwargs):
        self._reshape("view", out, args[0])

    def _op_reshape(self, out, args, kwargs):
        self._reshape("reshape", out, args[0])

    def _op_squeeze(self, out, args, kwargs):
        self._reshape("squeeze", out, args[0])

    def _op_unsqueeze(self, out, args, kwargs):
        self._reshape("unsqueeze", out, args[0])

    def _reshape(self, name, out, x, keeps_channels=None, flattens=None):
        gid, idx = self.get(x)
        if keeps_channels is None:
            keeps_channels = out.dim() >= 2 and tuple(out.shape[:2]) == tuple(x.shape[:2])
        if flattens is None:
            flattens = out.dim() == 2 and x.dim() > 2 and out.shape[0] == x.shape[0] and out.shape[1] == x[0].numel()
        if keeps_channels and out.dim() >= 2 and out.shape[:2] == x.shape[:2]:
            self.set(out, gid, idx)
        elif flattens:
            rep = x[0, 0].numel()
            self.set(out, gid.repeat_interleave(rep), idx.repeat_interleave(rep))
        else:
            raise self.unsupported(name, f"it reshapes {tuple(x.shape)} to {tuple(out.shape)}")

    def _op_getitem(self, out, args, kwargs):
        x, index = args[0], args[1]
        index = index if isinstance(index, tuple) else (index,)

        def whole(i) -> bool:
            return isinstance(i, slice) and i == slice(None)

        keeps = (len(index) == 1 and index[0] is Ellipsis) or (
            len(index) >= 1 and whole(index[0]) and (len(index) < 2 or whole(index[1])))
        if not (keeps and isinstance(out, torch.Tensor) and out.dim() == x.dim() and out.shape[:2] == x.shape[:2]):
            raise self.unsupported("getitem", "it indexes the batch or channel dimension")
        self.set(out, *self.get(x))

    def _op_pad(self, out, args, kwargs):
        x = args[0]
        pad = kwargs.get("pad", args[1] if len(args) > 1 else ())
        if len(pad) <= 2 * (x.dim() - 2):
            self.set(out, *self.get(x))
            return
        # Zero channels appended to an activation (the parameter-free shortcut of He et al.'s option A
        # and of PyramidNet): the padded tensor is added to a wider group position by position, so
        # neither side can lose a channel. Both are pinned; the layers between them stay prunable
        # (Li et al. 2017 prune only the first conv of each such residual block).
        mode, value = kwargs.get("mode", args[2] if len(args) > 2 else "constant"), kwargs.get(
            "value", args[3] if len(args) > 3 else None)
        if len(pad) > 2 * (x.dim() - 1) or mode != "constant" or value not in (None, 0, 0.0):
            raise self.unsupported("pad", "it pads the batch dimension or fills channels with non-zero values")
        reason = f"zero-padded along channels by a parameter-free shortcut{self.where()}"
        self.pin(self.get(x)[0], reason)
        g = self.new_group(out.shape[1], f"{self.stack[-1] if self.stack else 'input'}:pad{len(self.sizes)}", pinned=reason)
        self.set(out, torch.full((out.shape[1],), g, dtype=torch.long), torch.arange(out.shape[1]))

    def _op_batch_norm(self, out, args, kwargs):
        x = args[0]
        params = [args[i] if len(args) > i else None for i in (1, 2, 3, 4)]
        params += [kwargs.get(k) for k in ("running_mean", "running_var", "weight", "bias")]
        owner = next((self.owner[id(p)] for p in params if p is not None and id(p) in self.owner), None)
        if owner is None or not isinstance(owner[1], _BatchNorm):
            raise self.unsupported("batch_norm", "its parameters do not belong to a BatchNorm module")
        gid, idx = self.get(x)
        self._layer(owner[0], "norm", gid, idx)
        self.norm_sources.setdefault(owner[0], self.writers(x))
        self.set(out, gid, idx)

    def _op_linear(self, out, args, kwargs):
        x, weight = args[0], kwargs.get("weight", args[1] if len(args) > 1 else None)
        owner = self.owner.get(id(weight))
        if owner is None or not isinstance(owner[1], nn.Linear):
            raise self.unsupported("linear", "its weight is not the parameter of an nn.Linear module")
        if x.dim() != 2:
            raise self.unsupported("linear", f"it is applied to a {x.dim()}-D tensor (features not in dim 1)")
        gid, idx = self.get(x)
        g = self._module_group(owner[0], owner[1].out_features)
        self._layer(owner[0], "linear", gid, idx, g)
        self.set(out, torch.full((out.shape[1],), g, dtype=torch.long), torch.arange(out.shape[1]))

    def _conv(self, name, out, args, kwargs):
        x, weight = args[0], kwargs.get("weight", args[1] if len(args) > 1 else None)
        owner = self.owner.get(id(weight))
        if owner is None or not isinstance(owner[1], (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise self.unsupported(name, "its weight is not the parameter of an nn.Conv module")
        module = owner[1]
        gid, idx = self.get(x)
        self.written[id(out)] = (out, [owner[0]] * out.shape[1])
        if module.groups == 1:
            g = self._module_group(owner[0], module.out_channels)
            self._layer(owner[0], "conv", gid, idx, g)
            self.set(out, torch.full((out.shape[1],), g, dtype=torch.long), torch.arange(out.shape[1]))
        elif module.groups == module.in_channels == module.out_channels:
            self._layer(owner[0], "depthwise", gid, idx)
            self.set(out, gid, idx)
        else:
            raise self.unsupported(name, f"grouped convolution with groups={module.groups} in "
                                         f"'{owner[0]}' ties channels across groups")

    def _module_group(self, name: str, size: int) -> int:
        if name not in self.module_group:
            g = self.new_group(size, name)
            self.producers[g] = [name]
            self.module_group[name] = g
        return self.module_group[name]

    def _layer(self, name, kind, gid, idx, out_group=None):
        if name in self.layers:  # a module called twice must read aligned channels both times
            prev = self.layers[name]
            if len(prev["gid"]) != len(gid):
                raise self.unsupported(kind, f"module '{name}' is called on inputs of different widths")
            self.align((prev["gid"], prev["idx"]), (gid, idx), name)
            return
        self.layers[name] = {"kind": kind, "gid": gid, "idx": idx, "out": out_group}


def _flat(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)

