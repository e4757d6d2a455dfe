"""One run trained by several processes (DistributedDataParallel). Rank 0 writes every file.

Two ways in:

    torchrun --nproc_per_node 4 -m kebench run --method ke --data flowers102 ...
    kebench run --nproc 4 --method ke --data flowers102 ...     # kebench/run/launch.py spawns the 4

What the engine does with more than one process (`MultiProcess`; the training loop calls a
`SingleProcess` policy whose steps are no-ops when there is one):
* `--batch-size` stays the *global* batch: each rank trains on its shard of every batch the
  single-process run would draw (`Objective.shard`: contiguous parts by default; CS-KD keeps each
  anchor with its partner), and DDP averages the gradients, so the learning rate and the schedule
  mean the same thing at any process count. A loss that couples the whole batch (triplet mining)
  gathers the ranks' outputs with `gather_rows` and sees the batch one process would.
* At the start of every pass the model, the run's registered state (`run.state`: masks, teachers)
  and the RNG states are broadcast from rank 0, so whatever a regime did between passes (KE's
  re-initialisation, DSD's masks) is identical on every rank; BatchNorm statistics are broadcast
  at every epoch end, so all ranks evaluate the same network and get the same numbers.
* Stop requests (SIGTERM) and non-finite losses are agreed on by all ranks (one tiny all-reduce
  every `CHECK_EVERY` steps), so ranks never wait on each other forever.
"""
from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kebench.errors import UserError


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """With several processes on CUDA, each takes the GPU of its local rank."""
    if world_size() > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init(device: torch.device) -> None:
    """Join the process group the launcher described (RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""
    if world_size() <= 1 or dist.is_initialized():
        return
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise UserError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {key} is not set: start "
                            f"multi-process runs with torchrun or 'kebench run --nproc N'.")
    device = local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(shutdown)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- collectives
def _comm_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_(tensors, device: torch.device) -> None:
    """Overwrite each tensor with rank 0's values, in place (any dtype, any device)."""
    comm = _comm_device(device)
    for t in tensors:
        buf = t.detach().to(comm).contiguous()
        if buf.dtype == torch.bool:
            buf = buf.view(torch.uint8)
        dist.broadcast(buf, src=0)
        with torch.no_grad():
            t.copy_(buf.view(torch.bool) if t.dtype == torch.bool else buf)


def tensors_of(obj):
    """Every tensor in a module (parameters and buffers), a tensor, or a dict/list/tuple of them."""
    if isinstance(obj, nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    elif isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_of(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_of(v)


def sync_from_rank0(objects, device: torch.device) -> None:
    """Make modules/tensors and the RNG states identical to rank 0's (start of a pass)."""
    seen, tensors = set(), []
    for obj in objects:
        for t in tensors_of(obj):
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
    broadcast_(tensors, device)
    cpu_rng = torch.get_rng_state()
    broadcast_([cpu_rng], device)
    torch.set_rng_state(cpu_rng)
    if device.type == "cuda":
        cuda_rng = torch.cuda.get_rng_state(device)
        broadcast_([cuda_rng], device)
        torch.cuda.set_rng_state(cuda_rng, device)


def sum_(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """All-reduce (sum) a tensor and return the result on the tensor's own device."""
    buf = tensor.detach().to(_comm_device(device), torch.float64).clone()
    dist.all_reduce(buf)
    return buf.to(tensor.device, tensor.dtype)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `t` (equal-sized shards), concatenated in rank order: the global batch.
    Gradients flow only into this rank's own rows; see `global_loss`."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    parts[dist.get_rank()] = t
    return torch.cat(parts)


def global_loss(loss: torch.Tensor) -> torch.Tensor:
    """A loss every rank computes over the gathered global batch: same value, gradient scaled by
    the world size, because each rank back-propagates only into its own rows and DDP then averages
    the ranks' gradients; the average is then exactly the one-process gradient of the loss."""
    world = dist.get_world_size()
    return loss + (world - 1) * (loss - loss.detach())


def agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Logical OR of each flag across ranks (one all-reduce)."""
    buf = torch.tensor([float(f) for f in flags], device=_comm_device(device))
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return [bool(v) for v in buf.tolist()]


def replicas_identical(objects) -> bool:
    """Whether every rank holds bit-identical tensors (model, buffers, masks): one digest per rank."""
    import hashlib

    digest = hashlib.sha256()
    for t in tensors_of(objects):
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


def broadcast_object(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_grads(params) -> None:
    """Average gradients across ranks by hand (tensors DDP does not own, or a bypassed forward)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    world = dist.get_world_size()
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


class DDP(DistributedDataParallel):
    """DistributedDataParallel that also answers the wrapped model's attributes (objectives call
    `model.forward_features`, `model.get_classifier()`...) and counts forward calls, so the engine
    can tell when an objective bypassed DDP's forward (its gradients were then not synchronised)."""

    def __init__(self, module: nn.Module, device: torch.device):
        super().__init__(module, device_ids=[device] if device.type == "cuda" else None,
                         find_unused_parameters=True)
        self.forward_calls = 0

    def forward(self, *args, **kwargs):
        self.forward_calls += 1
        return super().forward(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module" or "_modules" not in self.__dict__ or "module" not in self._modules:
                raise
            return getattr(self._modules["module"], name)


# ------------------------------------------------------------------------- process policy
CHECK_EVERY = 20  # steps between non-finite-loss checks (and, with several processes, stop agreement)


class SingleProcess:
    """What the training loop does about processes when there is one: nothing. `MultiProcess`
    overrides each step; the loop calls these and never branches on the world size itself."""

    world, rank = 1, 0

    def __init__(self, device: torch.device):
        self.device = device

    def start_pass(self, model: nn.Module, shared, extra_params: list) -> nn.Module:
        """The module a pass trains (here the model itself)."""
        return model

    def load(self, train, objective, index_batch, gen, seed: int, index: int, epoch: int, step: int):
        """This process's (x, y) of a global batch of indices."""
        return train.load(index_batch, gen)

    def after_backward(self, train_model: nn.Module) -> None:
        """Make gradients global before the optimizer steps."""

    def check(self, step: int, loss: torch.Tensor, stop_requested: bool):
        """(bad loss, stop) at this step, decided alike by every process; and the loss to report."""
        bad = step % CHECK_EVERY == 0 and not torch.isfinite(loss.detach())
        return bad, stop_requested, loss

    def epoch_end(self, sums, model: nn.Module) -> None:
        """Make an epoch's running sums (`loop.Sums`) global; all processes keep rank 0's BatchNorm
        statistics."""

    def totals(self, sums: torch.Tensor) -> torch.Tensor:
        return sums

    def barrier(self) -> None:
        """Wait for every process (e.g. until rank 0's checkpoint is on disk)."""

    def agree(self, flags: list[bool]) -> list[bool]:
        return list(flags)

    def share(self, obj):
        """Rank 0's value of a picklable object."""
        return obj

    def describe(self, batch_size: int, objects) -> dict | None:
        """The result record's "distributed" entry (None: a single process has none)."""
        return None


class MultiProcess(SingleProcess):
    """Several processes train one run (DistributedDataParallel; see the module docstring)."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.world, self.rank = world_size(), rank()
        self.extra_params: list = []

    def start_pass(self, model, shared, extra_params):
        sync_from_rank0([model, *shared], self.device)  # passes start identical on every rank
        self.extra_params = extra_params
        return DDP(model, self.device)

    def load(self, train, objective, index_batch, gen, seed, index, epoch, step):
        from kebench.data.pipeline import epoch_generator

        # this rank's shard of the global batch, with its own augmentation draws
        index_batch = objective.shard(index_batch, self.world, self.rank)
        return train.load(index_batch, epoch_generator(seed, index, epoch, step, self.rank))

    def after_backward(self, train_model):
        """Average what DDP did not: tensors outside the model, and every gradient when the objective
        never called the wrapped model's forward (it called e.g. `model.forward_features` directly)."""
        if train_model.forward_calls == 0:
            average_grads(train_model.module.parameters())
        train_model.forward_calls = 0
        if self.extra_params:
            average_grads(self.extra_params)

    def check(self, step, loss, stop_requested):
        if step % CHECK_EVERY:
            return False, False, loss
        bad, stop = agree([not torch.isfinite(loss.detach()).item(), stop_requested], self.device)
        return bad, stop, float("nan")

    def epoch_end(self, sums, model):
        sums.set(sum_(sums.stacked(), self.device))
        broadcast_(list(model.buffers()), self.device)

    def totals(self, sums):
        return sum_(sums, self.device)

    def barrier(self):
        dist.barrier()

    def agree(self, flags):
        return agree(flags, self.device)

    def share(self, obj):
        return broadcast_object(obj)

    def describe(self, batch_size, objects):
        return {"world_size": self.world, "backend": dist.get_backend(), "batch_per_process": batch_size // self.world,
                "replicas_identical": replicas_identical(objects)}


def policy(device: torch.device) -> SingleProcess:
    """The process policy of this process's run."""
    return MultiProcess(device) if world_size() > 1 else SingleProcess(device)
