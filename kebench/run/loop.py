"""THE training loop: one pass (epochs of steps) of one model under one objective, with a fresh
optimizer and LR schedule. `Run.fit` builds a `PassLoop` and runs it; everything about processes
goes through the run's process policy (`distributed.SingleProcess` / `MultiProcess`), everything
about files through `kebench.run.checkpoint`.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kebench.run import checkpoint
from kebench.run import guard
from kebench.run.checkpoint import PassState
from kebench.data.pipeline import epoch_generator
from kebench.errors import RunFailure, UserError
from kebench.run.progress import Progress
from kebench.config import LR_SCHEDULES as SCHEDULES  # declared with the --lr-schedule setting


def lr_factor(update: int, per_epoch: int, total: int, warmup: int, schedule: str,
              milestones=(0.5, 0.75), gamma: float = 0.1) -> float:
    """Multiple of the peak LR at scheduler update `update` (counted from the schedule's start; an
    update is an epoch, or a step with `per_epoch` steps per epoch) of a `total`-epoch schedule.

    The official KE code's `cosine_lr`: a linear warm-up that reaches the peak with the last update
    of epoch `warmup` (per epoch: (e + 1) / warmup), then cosine decay from the peak at epoch
    `warmup` towards 0 at epoch `total`; "constant" holds the peak after the warm-up; "step"
    multiplies it by `gamma` at each milestone (fractions of `total`: the first update of epoch
    round(m * total) has the lower LR, as torch's MultiStepLR with rethinking-network-pruning's
    milestones epochs * [0.5, 0.75]). Per step, the warm-up rises every step, so it never
    saw-tooths across epochs."""
    warm = warmup * per_epoch
    if update < warm:
        return (update + 1) / warm
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** sum(update >= round(m * total) * per_epoch for m in milestones)
    return 0.5 * (1 + math.cos(math.pi * (update - warm) / max((total - warmup) * per_epoch, 1)))


def effective_warmup(warmup: int, total: int) -> int:
    """Warm-up epochs of a `total`-epoch schedule: at most a quarter of it, so a short pass (a smoke
    run, RePr's S2, a short fine-tune) still decays instead of spending itself warming up."""
    return max(0, min(int(warmup), total // 4))


def lr_scheduler(optimizer: torch.optim.Optimizer, peak: float, start: int, per_epoch: int, total: int,
                 warmup: int, schedule: str, milestones=(0.5, 0.75), gamma: float = 0.1
                 ) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's LambdaLR over `lr_factor`, positioned at update `start` (a resumed or continued
    schedule); step it once per update. The factor is a closed form of the position, so a resumed
    pass gets exactly the LR an uninterrupted one had."""
    for group in optimizer.param_groups:  # the peak, whatever a restored optimizer last used
        group["lr"] = group["initial_lr"] = peak
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(start + i, per_epoch, total, warmup, schedule, milestones, gamma))


@dataclass
class LRPlan:
    """A pass's learning rate: peak, schedule, warm-up epochs and its window (offset, total) in a
    schedule that may span several passes."""

    peak: float
    schedule: str
    warmup: int
    offset: int
    total: int
    milestones: tuple = (0.5, 0.75)  # the step schedule's
    gamma: float = 0.1

    @classmethod
    def of(cls, run, kind: str, epochs: int, lr, schedule, warmup, lr_window) -> "LRPlan":
        cfg = run.cfg
        peak = cfg.lr if lr is None else float(lr)
        schedule = schedule or cfg.lr_schedule
        if schedule not in SCHEDULES or peak <= 0:
            raise UserError(f"{run.method.name}: a {kind} pass needs an LR > 0 and a schedule in "
                            f"{', '.join(SCHEDULES)}; got lr {peak}, schedule '{schedule}'.")
        offset, total = lr_window or (0, epochs)
        return cls(peak, schedule, effective_warmup(cfg.warmup_epochs if warmup is None else warmup, total),
                   offset, total, tuple(cfg.lr_milestones), cfg.lr_gamma)

    def step_ends(self, epochs: int) -> list[int]:
        """Epochs (1-based within this pass of `epochs`) that end an LR step of the step schedule: the
        last epoch before each milestone the pass reaches (the first update of epoch round(m * total)
        of the window has the lower LR), and the pass's last epoch. [] for other schedules."""
        if self.schedule != "step":
            return []
        before = {round(m * self.total) - self.offset for m in self.milestones}
        return sorted(e for e in before if 1 <= e < epochs) + [epochs]

    def describe(self) -> dict:
        out = {"peak": self.peak, "schedule": self.schedule, "warmup_epochs": self.warmup,
               "window": [self.offset, self.total]}
        if self.schedule == "step":
            out.update(milestones=list(self.milestones), gamma=self.gamma)
        return out


class PassLoop:
    """One pass being trained: its epochs, their steps, evaluation, hooks and checkpoints."""

    def __init__(self, run, ps: PassState, model: nn.Module, objective, hooks: list, lr: LRPlan,
                 optimizer, scaler, params: list):
        self.run, self.ps, self.model, self.objective, self.hooks = run, ps, model, objective, hooks
        self.lr, self.optimizer, self.scaler = lr, optimizer, scaler
        self.procs = run.processes
        n_model = sum(1 for _ in model.parameters())
        # torch.compile shares the parameters; the FLOP-counting first step runs eagerly (the
        # counter sees aten ops, which compiled kernels bypass).
        self.train_model = self.procs.start_pass(model, [run.model, run.state], params[n_model:])
        self.compiled = run.policy.compiled(self.train_model)
        self.train = run.stream("train")
        self.scheduler = None
        self.stopped: str | None = None

    def run_pass(self) -> str | None:
        """Train the remaining epochs; return the reason a hook ended the pass early, if any."""
        run, ps = self.run, self.ps
        progress = Progress(enabled=run.show_progress, description=f"{run.method.name} {run.pass_name(ps.kind, ps.label, ps.index)}",
                            eta=lambda row: run.eta(row, ps.epochs))
        with progress:
            for epoch in range(ps.epoch, ps.epochs):
                row = self.epoch(epoch, progress)
                last = epoch + 1 == ps.epochs
                if last or (run.cfg.eval_every and (epoch + 1) % run.cfg.eval_every == 0):
                    row["test"] = run.evaluate(self.model)
                    run.book.track_best(run.primary, row["test"], ps.index, ps.label, epoch + 1)
                progress.end_epoch(row)
                for hook in self.hooks:
                    hook.epoch_end(self.model, epoch + 1, row)
                self.stopped = next((why for why in (hook.stop_pass() for hook in self.hooks) if why), None)
                ps.epoch = epoch + 1
                ps.history.append(row)
                run.append_metrics(row)
                if self.stopped:  # a hook ended the pass early: the record completes it
                    break
                if not last and run.book.save_due(run.cfg.checkpoint_every_s):
                    run.save_checkpoint(self.model, self.optimizer, self.scaler, ps, complete=False)
        return self.stopped

    def epoch(self, epoch: int, progress: Progress) -> dict:
        """Train one epoch; return its metrics row (without test metrics)."""
        run, ps, cfg, objective, procs = self.run, self.ps, self.run.cfg, self.objective, self.procs
        self.model.train()
        objective.train_mode(self.model)
        gen = epoch_generator(cfg.seed, ps.index, epoch)
        batches = self.train.batches(gen, objective.batch_sampler(self.train.labels.cpu(), cfg.batch_size, gen),
                                     share=lambda b: objective.shard(b, procs.world, procs.rank))
        steps_per_epoch = len(batches)
        progress.start_epoch(epoch + 1, ps.epochs, steps_per_epoch)
        sums = Sums(run.device)
        t0 = time.perf_counter()
        start, lr = 0, None
        if ps.partial is not None:  # resuming inside this epoch: skip the steps already taken
            part, ps.partial = ps.partial, None
            start, lr = part["step"], part["lr"]
            gen.set_state(part["gen"])
            t0 -= part["time"]
            if procs.rank == 0:  # the saved sums are global; other ranks restart theirs from 0
                sums.restore(part)
        per_epoch = steps_per_epoch if cfg.lr_per == "step" else 1  # scheduler updates per epoch
        if self.scheduler is None:  # positioned where this pass starts in its (resumed, shared) schedule
            at = (self.lr.offset + epoch) * per_epoch + (start if per_epoch > 1 else 0)
            self.scheduler = lr_scheduler(self.optimizer, self.lr.peak, at, per_epoch, self.lr.total,
                                          self.lr.warmup, self.lr.schedule, self.lr.milestones, self.lr.gamma)
        for step, index_batch in itertools.islice(enumerate(batches), start, None):
            lr = self.optimizer.param_groups[0]["lr"]
            loss, n = self.step(procs.load(self.train, objective, index_batch, gen, cfg.seed, ps.index, epoch, step),
                                sums, per_epoch)
            progress.step(n)
            bad, stop, shown = procs.check(step, loss, guard.STOP.signum is not None)
            if bad:
                self.fail_nonfinite(epoch, shown)
            if stop:
                self.interrupt(dict(step=step, gen=gen, lr=lr, t0=t0, sums=sums.stacked(),
                                    steps_per_epoch=steps_per_epoch, epoch=epoch))
        if per_epoch == 1:
            self.scheduler.step()
        procs.epoch_end(sums, self.model)
        if run.device.type == "cuda":  # the queued steps finish before the epoch's time is read
            torch.cuda.synchronize(run.device)
        epoch_time = time.perf_counter() - t0
        run.threads.adapt()  # CPU: the next epoch takes the cores other work left free in this one
        ps.wall_time_s += epoch_time
        ps.images += sums.seen
        mean_loss = (sums.loss / max(sums.seen, 1)).item()
        if not math.isfinite(mean_loss):
            self.fail_nonfinite(epoch, mean_loss)
        return {"pass": ps.index, "kind": ps.kind, "label": ps.label, "epoch": epoch + 1, "lr": lr,
                "loss": mean_loss,
                "train_top1": (sums.correct / max(sums.scored, 1)).item() if run.task == "classification" else None,
                "images_per_s": sums.seen / max(epoch_time, 1e-9)}

    def step(self, batch, sums: "Sums", per_epoch: int):
        """One optimisation step on batch (x, y); returns (loss, images)."""
        x, y = batch
        ps, optimizer, scaler = self.ps, self.optimizer, self.scaler
        count_flops = ps.step_flops is None
        with (FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()) as counter:
            with self.run.autocast():
                loss, logits = self.objective.loss(self.train_model if count_flops else self.compiled, x, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
        if count_flops:
            ps.step_flops = int(counter.get_total_flops()) * self.procs.world
        self.procs.after_backward(self.train_model)
        for hook in self.hooks:
            hook.before_step(self.model, optimizer)
        scaler.step(optimizer)
        scaler.update()
        for hook in self.hooks:
            hook.after_step(self.model, optimizer)
        if per_epoch > 1:
            self.scheduler.step()
        sums.add(loss, logits, y)
        ps.steps += 1
        return loss, len(y)

    def fail_nonfinite(self, epoch: int, loss) -> None:
        raise RunFailure(f"non-finite loss ({float(loss)}) in {self.ps.kind} {self.ps.label}, epoch {epoch + 1}; "
                         f"lower --lr or check the data. No result is reported for this run.")

    def interrupt(self, at: dict) -> None:
        """A stop was requested (SIGTERM/SIGINT): checkpoint the exact position inside the epoch
        (step, augmentation generator, running sums) and raise RunInterrupted."""
        run, ps = self.run, self.ps
        totals = self.procs.totals(at["sums"]).cpu()
        ps.partial = {"step": at["step"] + 1, "gen": at["gen"].get_state(), "lr": at["lr"],
                      "time": time.perf_counter() - at["t0"], "loss_sum": totals[0].float(),
                      "correct": totals[1].float(), "seen": int(totals[2]), "scored": int(totals[3])}
        run.save_checkpoint(self.model, self.optimizer, self.scaler, ps, complete=False)
        ps.partial = None
        self.procs.barrier()  # the checkpoint is on disk before any process exits
        signum = guard.STOP.consume()
        raise guard.RunInterrupted(
            f"Run {run.cfg.run_id()} stopped by {guard.signal_name(signum)} in {ps.kind} {ps.label}, epoch "
            f"{at['epoch'] + 1}, after step {at['step'] + 1}/{at['steps_per_epoch']}; checkpoint written to "
            f"{run.dir / checkpoint.CHECKPOINT}. Rerun the same command with --resume to continue exactly from there.",
            signum)


class Sums:
    """An epoch's running sums: loss × images, correct predictions, images seen, and images scored
    (those the objective returned logits for; CS-KD: anchors only)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.seen = self.scored = 0

    def add(self, loss: torch.Tensor, logits, y: torch.Tensor) -> None:
        self.loss += loss.detach().float() * len(y)
        if logits is not None:
            self.correct += (logits.detach().argmax(1) == y[: len(logits)]).sum()
            self.scored += len(logits)
        self.seen += len(y)

    def restore(self, part: dict) -> None:
        self.loss += part["loss_sum"].to(self.device)
        self.correct += part["correct"].to(self.device)
        self.seen, self.scored = part["seen"], part["scored"]

    def stacked(self) -> torch.Tensor:
        """The sums as one float64 tensor (to all-reduce or checkpoint them together)."""
        return torch.stack([self.loss.detach().double(), self.correct.detach().double(),
                            torch.tensor(float(self.seen), device=self.device, dtype=torch.float64),
                            torch.tensor(float(self.scored), device=self.device, dtype=torch.float64)])

    def set(self, totals: torch.Tensor) -> None:
        self.loss, self.correct, self.seen, self.scored = totals[0], totals[1], int(totals[2]), int(totals[3])
