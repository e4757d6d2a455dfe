"""THE training loop. Every method runs through `Run.fit`; regimes only decide when to call it.

A `Run` owns the config, device, data, model, objective and regime of one run, writes its
folder (config.yaml, metrics.jsonl, result.json, checkpoint.pt, model.pt) and resumes it.

Resume works by deterministic replay: a regime's `run()` is executed again from the top; every
`fit()` call the checkpoint says is finished returns its recorded pass without training, and the
checkpointed state (model, optimizer, registered regime state, RNG) is loaded at the exact point
where the interrupted run stopped. Regimes therefore must keep any state that outlives a pass in
`run.state` (modules or tensors), which is checkpointed with the model.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kebench import data as datasets
from kebench import distributed, guard, metrics, monitor, results
from kebench.config import RunConfig, save_yaml
from kebench.data.pipeline import BatchStream, epoch_generator
from kebench.device import DevicePolicy
from kebench.errors import UserError
from kebench.models import create_model
from kebench.plugin import Hook, Objective
from kebench.progress import Progress

PRIMARY = {"classification": "top1", "retrieval": "r@1"}
CHECKPOINT = "checkpoint.pt"
PREV_CHECKPOINT = "checkpoint.prev.pt"  # the one before: the fallback if the newest is corrupt
CHECK_EVERY = 20  # steps between non-finite-loss checks (and, with several processes, stop agreement)


class RunFailure(Exception):
    """The run itself failed (e.g. a NaN loss); recorded as status 'failed' in result.json."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available here. Use --device cpu or auto.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


SCHEDULES = ("cosine", "constant")


def lr_factor(update: int, per_epoch: int, total: int, warmup: int, schedule: str) -> float:
    """Multiple of the peak LR at scheduler update `update` (counted from the schedule's start; an
    update is an epoch, or a step with `per_epoch` steps per epoch) of a `total`-epoch schedule.

    The official KE code's `cosine_lr`: a linear warm-up that reaches the peak with the last update
    of epoch `warmup` (per epoch: (e + 1) / warmup), then cosine decay from the peak at epoch
    `warmup` towards 0 at epoch `total`; "constant" holds the peak after the warm-up. Per step, the
    warm-up rises every step, so it never saw-tooths across epochs."""
    warm = warmup * per_epoch
    if update < warm:
        return (update + 1) / warm
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (update - warm) / max((total - warmup) * per_epoch, 1)))


def effective_warmup(warmup: int, total: int) -> int:
    """Warm-up epochs of a `total`-epoch schedule: at most a quarter of it, so a short pass (a smoke
    run, RePr's S2, a short fine-tune) still decays instead of spending itself warming up."""
    return max(0, min(int(warmup), total // 4))


def lr_scheduler(optimizer: torch.optim.Optimizer, peak: float, start: int, per_epoch: int, total: int,
                 warmup: int, schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's LambdaLR over `lr_factor`, positioned at update `start` (a resumed or continued
    schedule); step it once per update. The factor is a closed form of the position, so a resumed
    pass gets exactly the LR an uninterrupted one had."""
    for group in optimizer.param_groups:  # the peak, whatever a restored optimizer last used
        group["lr"] = group["initial_lr"] = peak
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(start + i, per_epoch, total, warmup, schedule))


@dataclass
class PassState:
    """Book-keeping of the pass being trained (what a checkpoint must restore)."""

    index: int
    kind: str
    label: int
    epochs: int
    epoch: int = 0  # completed epochs
    steps: int = 0
    images: int = 0
    wall_time_s: float = 0.0
    step_flops: int | None = None
    history: list = field(default_factory=list)
    partial: dict | None = None  # mid-epoch position and sums, when a stop request saved the pass mid-epoch


class Run:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, show_progress: bool = True,
                 policy: DevicePolicy | None = None):
        self.cfg = cfg
        self.device = distributed.local_device(pick_device(cfg.device))
        self.world, self.rank = distributed.world_size(), distributed.rank()  # rank 0 writes every file
        self.dir = Path(cfg.out) / cfg.run_id()  # created by execute(): a config that fails here leaves nothing
        self.show_progress = show_progress and self.rank == 0
        seed_everything(cfg.seed)
        self.data = datasets.load(cfg)
        self.task = self.data.task
        self.primary = PRIMARY[self.task]
        self.method = cfg.method_spec
        self.policy = policy or DevicePolicy.for_run(cfg, self.device)  # AMP, layout, compile, data placement
        self.policy.apply_backend()
        self.amp_dtype, self.channels_last = self.policy.amp_dtype, self.policy.channels_last
        self.objective = self.method.objective.load()(cfg.plugin_params(self.method.objective.name), self)
        self.regime = self.method.regime.load()(cfg.plugin_params(self.method.regime.name), self)
        self.model = self.build_model()
        self._check_batch_size()
        self.state: dict[str, nn.Module | torch.Tensor] = {}
        self.passes: list[dict] = []
        self.best: dict = {}
        self.extra: dict = {}  # run-level facts a regime wants in result.json
        self._pass_counter = 0
        self._resuming = resume
        self._resume: dict | None = None  # the checkpoint, read by execute() under the folder's lock
        self._elapsed_before = 0.0
        self._streams: dict[str, BatchStream] = {}
        self._last_save = time.perf_counter()
        self.monitors = monitor.hooks_for(self)  # TensorBoard when KEBENCH_TENSORBOARD=1

    def _check_batch_size(self) -> None:
        """Refuse, before anything runs, a batch that cannot train this model on this data. (An objective
        with its own batch sampler — CS-KD pairs, P×K — sizes its batches itself and checks them.)"""
        if type(self.objective).batch_sampler is not Objective.batch_sampler:
            return
        per_process, n_train = self.cfg.batch_size // self.world, len(self.data.train)
        if per_process < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            raise UserError(f"--batch-size {self.cfg.batch_size} gives {per_process} image(s) per step"
                            f"{f' on each of {self.world} processes' if self.world > 1 else ''}, but "
                            f"'{self.cfg.arch}' has BatchNorm layers, which need at least 2 images per step "
                            f"to train. Use --batch-size 2 or more (the papers use 32 to 128).")
        if self.cfg.batch_size > n_train:
            raise UserError(f"--batch-size {self.cfg.batch_size} is larger than the {n_train} training images of "
                            f"'{self.cfg.data}' (incomplete batches are dropped, so no step would run). Use a "
                            f"batch size of at most {n_train}.")

    # ------------------------------------------------------------------ building blocks
    def build_model(self, arch: str | None = None, **kwargs) -> nn.Module:
        """A fresh model for this run's data and objective, on the run's device."""
        model = create_model(arch or self.cfg.arch, self.data.num_classes, self.data.in_chans, **kwargs)
        model = self.objective.adapt_model(model, self.data.num_classes)
        return self.policy.place(model)

    def stream(self, split: str = "train") -> BatchStream:
        if split not in self._streams:
            source = getattr(self.data, split)
            if source is None:
                raise UserError(f"Dataset '{self.cfg.data}' has no {split} split.")
            self._streams[split] = BatchStream(
                self.data, source, batch_size=self.cfg.batch_size if split == "train" else max(self.cfg.batch_size, 256),
                device=self.device, train=split == "train", policy=self.policy, shard=(self.rank, self.world))
        return self._streams[split]

    def autocast(self):
        return self.policy.autocast()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, model: nn.Module | None = None, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Model outputs (logits or embeddings, float32 on CPU) and labels for a whole split."""
        model = model or self.model
        was_training = model.training
        model.eval()
        outs, labels = [], []
        with self.autocast():
            for x, y in self.stream(split):
                outs.append(model(x).float().cpu())
                labels.append(y.cpu())
        model.train(was_training)
        return torch.cat(outs), torch.cat(labels)

    def evaluate(self, model: nn.Module | None = None, split: str = "test", prefix: str = "") -> dict:
        """Task metrics on a split: top1 for classification; NMI and Recall@K for retrieval."""
        out, labels = self.predict(model, split)
        if self.task == "classification":
            result = {"top1": metrics.top1(out, labels)}
        else:
            result = metrics.retrieval_metrics(out, labels, seed=self.cfg.seed, device=self.device)
        return {prefix + k: v for k, v in result.items()}

    # ------------------------------------------------------------------ training
    def fit(self, epochs: int | None = None, *, kind: str = "pass", label: int | None = None,
            model: nn.Module | None = None, hooks: list[Hook] = (), objective=None,
            lr: float | None = None, schedule: str | None = None, warmup: int | None = None,
            lr_window: tuple[int, int] | None = None, after=None) -> dict:
        """Train `model` (default: run.model) for one pass with a fresh optimizer and LR schedule.

        lr, schedule ("cosine" | "constant"), warmup: this pass's peak LR, schedule and warm-up epochs
        (default: --lr, --lr-schedule, --warmup-epochs), e.g. a short constant-LR fine-tune.
        lr_window=(offset, total) continues one schedule of `total` epochs across passes (DSD, RePr);
        its warm-up opens the whole window, not each pass.
        after(model) -> dict adds pass-level metrics (slim accuracy) to the record; its dict-valued
        entries (e.g. per-layer "hypotheses") become record keys beside "metrics".
        Returns the pass record (also appended to run.passes).
        """
        cfg = self.cfg
        epochs = epochs or cfg.epochs
        model = model if model is not None else self.model
        objective = objective or self.objective
        index = self._pass_counter
        self._pass_counter += 1
        label = label if label is not None else index + 1
        hooks = list(hooks) + objective.hooks() + self.monitors

        peak = cfg.lr if lr is None else float(lr)
        schedule = schedule or cfg.lr_schedule
        if schedule not in SCHEDULES or peak <= 0:
            raise UserError(f"{self.method.name}: a {kind} pass needs an LR > 0 and a schedule in "
                            f"{', '.join(SCHEDULES)}; got lr {peak}, schedule '{schedule}'.")
        offset, total = lr_window or (0, epochs)
        warm = effective_warmup(cfg.warmup_epochs if warmup is None else warmup, total)

        ps = PassState(index=index, kind=kind, label=label, epochs=epochs)
        params = [*model.parameters(), *objective.extra_parameters(model)]
        optimizer = torch.optim.SGD(params, lr=peak, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scaler = self.policy.grad_scaler()

        ck = self._resume
        if ck is not None:
            if index < ck["pass"] or (index == ck["pass"] and ck["complete"]):
                record = ck["passes"][index]
                if index == ck["pass"]:  # the last finished pass: its end state is where we resume
                    self._restore(ck, model)
                    self._resume = None
                return record
            if index == ck["pass"]:
                self._restore(ck, model, optimizer, scaler)
                ps = PassState(**ck["pass_state"])
                self._resume = None

        stopped = None
        # torch.compile shares the parameters; the FLOP-counting first step runs eagerly (the
        # counter sees aten ops, which compiled kernels bypass).
        train_model = model
        if self.world > 1:  # passes start identical on every rank (between-pass work included)
            distributed.sync_from_rank0([model, self.model, self.state], self.device)
            train_model = distributed.DDP(model, self.device)
            extra_params = params[sum(1 for _ in model.parameters()):]
        compiled = self.policy.compiled(train_model)
        train = self.stream("train")
        steps_per_epoch = scheduler = None
        progress = Progress(enabled=self.show_progress, description=f"{self.method.name} {kind} {label}")
        with progress:
            for epoch in range(ps.epoch, epochs):
                model.train()
                objective.train_mode(model)
                gen = epoch_generator(cfg.seed, index, epoch)
                batches = train.batches(gen, objective.batch_sampler(train.labels.cpu(), cfg.batch_size, gen),
                                        share=lambda b: objective.shard(b, self.world, self.rank))
                steps_per_epoch = len(batches)
                progress.start_epoch(epoch + 1, epochs, steps_per_epoch)
                loss_sum = torch.zeros((), device=self.device)
                correct = torch.zeros((), device=self.device)
                seen = scored = 0  # scored: samples the objective returned logits for (CS-KD: anchors only)
                t0 = time.perf_counter()
                start = 0
                if ps.partial is not None:  # resuming inside this epoch: skip the steps already taken
                    part, ps.partial = ps.partial, None
                    start, lr = part["step"], part["lr"]
                    gen.set_state(part["gen"])
                    t0 -= part["time"]
                    if self.rank == 0:  # the saved sums are global; other ranks restart theirs from 0
                        loss_sum += part["loss_sum"].to(self.device)
                        correct += part["correct"].to(self.device)
                        seen, scored = part["seen"], part["scored"]
                per_epoch = steps_per_epoch if cfg.lr_per == "step" else 1  # scheduler updates per epoch
                if scheduler is None:  # positioned where this pass starts in its (resumed, shared) schedule
                    at = (offset + epoch) * per_epoch + (start if per_epoch > 1 else 0)
                    scheduler = lr_scheduler(optimizer, peak, at, per_epoch, total, warm, schedule)
                for step, index_batch in itertools.islice(enumerate(batches), start, None):
                    lr = optimizer.param_groups[0]["lr"]
                    if self.world > 1:  # this rank's shard of the global batch, its own augmentation draws
                        index_batch = objective.shard(index_batch, self.world, self.rank)
                        x, y = train.load(index_batch, epoch_generator(cfg.seed, index, epoch, step, self.rank))
                    else:
                        x, y = train.load(index_batch, gen)
                    count_flops = ps.step_flops is None
                    with (FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()) as counter:
                        with self.autocast():
                            loss, logits = objective.loss(train_model if count_flops else compiled, x, y)
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                    if count_flops:
                        ps.step_flops = int(counter.get_total_flops()) * self.world
                    if self.world > 1:
                        self._sync_grads(train_model, extra_params)
                    for hook in hooks:
                        hook.before_step(model, optimizer)
                    scaler.step(optimizer)
                    scaler.update()
                    for hook in hooks:
                        hook.after_step(model, optimizer)
                    if per_epoch > 1:
                        scheduler.step()
                    loss_sum += loss.detach().float() * len(y)
                    if logits is not None:
                        correct += (logits.detach().argmax(1) == y[: len(logits)]).sum()
                        scored += len(logits)
                    seen += len(y)
                    ps.steps += 1
                    progress.step(len(y))
                    if self.world == 1:
                        bad = step % CHECK_EVERY == 0 and not torch.isfinite(loss.detach())
                        stop = guard.STOP.signum is not None
                    elif step % CHECK_EVERY == 0:  # every rank decides alike, or one would wait forever
                        bad, stop = distributed.agree([not torch.isfinite(loss.detach()).item(),
                                                       guard.STOP.signum is not None], self.device)
                    else:
                        bad = stop = False
                    if bad:
                        self._fail_nonfinite(ps, epoch, loss if self.world == 1 else float("nan"))
                    if stop:
                        self._interrupt(model, optimizer, scaler, ps, dict(
                            step=step, gen=gen, lr=lr, t0=t0, sums=self._sums(loss_sum, correct, seen, scored),
                            steps_per_epoch=steps_per_epoch, epoch=epoch))
                if per_epoch == 1:
                    scheduler.step()
                if self.world > 1:  # epoch totals over all ranks; all ranks keep rank 0's BN statistics
                    totals = distributed.sum_(self._sums(loss_sum, correct, seen, scored), self.device)
                    loss_sum, correct, seen, scored = totals[0], totals[1], int(totals[2]), int(totals[3])
                    distributed.broadcast_(list(model.buffers()), self.device)
                epoch_time = time.perf_counter() - t0
                ps.wall_time_s += epoch_time
                ps.images += seen
                mean_loss = (loss_sum / max(seen, 1)).item()
                if not math.isfinite(mean_loss):
                    self._fail_nonfinite(ps, epoch, mean_loss)
                row = {"pass": index, "kind": kind, "label": label, "epoch": epoch + 1, "lr": lr,
                       "loss": mean_loss, "train_top1": (correct / max(scored, 1)).item() if self.task == "classification" else None,
                       "images_per_s": seen / max(epoch_time, 1e-9)}
                last = epoch + 1 == epochs
                if last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                    row["test"] = self.evaluate(model)
                    self._track_best(row["test"], index, label, epoch + 1)
                progress.end_epoch(row)
                for hook in hooks:
                    hook.epoch_end(model, epoch + 1, row)
                stopped = next((reason for reason in (hook.stop_pass() for hook in hooks) if reason), None)
                ps.epoch = epoch + 1
                ps.history.append(row)
                self._append_metrics(row)
                if stopped:  # a hook ended the pass early: the record below completes it
                    break
                if not last and time.perf_counter() - self._last_save >= cfg.checkpoint_every_s:
                    self._save_checkpoint(model, optimizer, scaler, ps, complete=False)

        test = ps.history[-1]["test"] if ps.history and "test" in ps.history[-1] else self.evaluate(model)
        record = {"kind": kind, "index": label, "epochs": epochs, "steps": ps.steps, "images": ps.images,
                  "step_flops": ps.step_flops, "train_flops": (ps.step_flops or 0) * ps.steps,
                  "wall_time_s": round(ps.wall_time_s, 3), "metrics": dict(test),
                  "lr": {"peak": peak, "schedule": schedule, "warmup_epochs": warm, "window": [offset, total]}}
        if stopped:
            record.update(epochs=ps.epoch, planned_epochs=epochs, stopped=stopped)
        if after is not None:
            for key, value in after(model).items():  # dict values (e.g. "hypotheses") go beside "metrics"
                (record if isinstance(value, dict) else record["metrics"])[key] = value
        self.passes.append(record)
        for hook in hooks:
            if hasattr(hook, "pass_end"):  # hooks written against an older Hook have no pass_end
                hook.pass_end(record)
        self._save_checkpoint(model, optimizer, scaler, ps, complete=True)
        return record

    def _fail_nonfinite(self, ps: PassState, epoch: int, loss) -> None:
        raise RunFailure(f"non-finite loss ({float(loss)}) in {ps.kind} {ps.label}, epoch {epoch + 1}; "
                         f"lower --lr or check the data. No result is reported for this run.")

    def _sync_grads(self, ddp: "distributed.DDP", extra_params: list) -> None:
        """Average what DDP did not: tensors outside the model, and every gradient when the objective
        never called the wrapped model's forward (it called e.g. `model.forward_features` directly)."""
        if ddp.forward_calls == 0:
            distributed.average_grads(ddp.module.parameters())
        ddp.forward_calls = 0
        if extra_params:
            distributed.average_grads(extra_params)

    def _sums(self, loss_sum, correct, seen: int, scored: int) -> torch.Tensor:
        """An epoch's running sums as one float64 tensor (to all-reduce or checkpoint them together)."""
        return torch.stack([loss_sum.detach().double(), correct.detach().double(),
                            torch.tensor(float(seen), device=self.device, dtype=torch.float64),
                            torch.tensor(float(scored), device=self.device, dtype=torch.float64)])

    def _interrupt(self, model, optimizer, scaler, ps: PassState, at: dict) -> None:
        """A stop was requested (SIGTERM/SIGINT): checkpoint the exact position inside the epoch
        (step, augmentation generator, running sums) and raise RunInterrupted."""
        totals = at["sums"]
        if self.world > 1:
            totals = distributed.sum_(totals, self.device)
        totals = totals.cpu()
        ps.partial = {"step": at["step"] + 1, "gen": at["gen"].get_state(), "lr": at["lr"],
                      "time": time.perf_counter() - at["t0"], "loss_sum": totals[0].float(),
                      "correct": totals[1].float(), "seen": int(totals[2]), "scored": int(totals[3])}
        self._save_checkpoint(model, optimizer, scaler, ps, complete=False)
        ps.partial = None
        if self.world > 1:
            torch.distributed.barrier()  # the checkpoint is on disk before any rank exits
        signum = guard.STOP.consume()
        raise guard.RunInterrupted(
            f"Run {self.cfg.run_id()} stopped by {guard.signal_name(signum)} in {ps.kind} {ps.label}, epoch "
            f"{at['epoch'] + 1}, after step {at['step'] + 1}/{at['steps_per_epoch']}; checkpoint written to "
            f"{self.dir / CHECKPOINT}. Rerun the same command with --resume to continue exactly from there.",
            signum)

    def _track_best(self, test: dict, index: int, label: int, epoch: int) -> None:
        value = test.get(self.primary)
        if value is not None and (not self.best or value > self.best[self.primary]):
            self.best = {self.primary: value, "pass": index + 1, "label": label, "epoch": epoch}

    # ------------------------------------------------------------------ persistence
    def _append_metrics(self, row: dict) -> None:
        import json

        if self.rank != 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)  # a regime driven without execute() (tests, notebooks)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(results._clean(row)) + "\n")
        monitor.write_csv(self.dir)

    def _state_dicts(self) -> dict:
        return {k: (v.state_dict() if isinstance(v, nn.Module) else v) for k, v in self.state.items()}

    def _save_checkpoint(self, model, optimizer, scaler, ps: PassState, complete: bool) -> None:
        if self.rank != 0:
            self._last_save = time.perf_counter()
            return
        ckpt = {
            "version": 1, "run_id": self.cfg.run_id(), "pass": ps.index, "complete": complete,
            "pass_state": {k: getattr(ps, k) for k in PassState.__dataclass_fields__},
            "model": model.state_dict(), "run_model": None if model is self.model else self.model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "state": self._state_dicts(), "passes": self.passes, "best": self.best, "extra": self.extra,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "elapsed": self.elapsed(), "world_size": self.world,
        }
        # The last good checkpoint becomes checkpoint.prev.pt only once the new one is complete on disk.
        results.save_torch(self.dir / CHECKPOINT, ckpt, previous=self.dir / PREV_CHECKPOINT)
        self._last_save = time.perf_counter()

    def _read_checkpoint(self) -> dict | None:
        """The newest readable checkpoint of this run; a corrupt or truncated one falls back to the one
        saved before it (checkpoint.prev.pt), and with neither the run restarts from the beginning."""
        import warnings

        problems = []
        for name in (CHECKPOINT, PREV_CHECKPOINT):
            path = self.dir / name
            if not path.is_file():
                continue
            try:
                ck = results.load_torch(path)
            except results.CorruptCheckpoint as exc:
                problems.append(str(exc))
                continue
            malformed = checkpoint_problem(ck)
            if malformed:
                problems.append(f"{path} is not a complete kebench checkpoint ({malformed}).")
                continue
            if ck["run_id"] != self.cfg.run_id():
                continue
            if problems:
                warnings.warn(f"{' '.join(problems)} Resuming from the previous checkpoint {path} instead "
                              f"(pass {ck['pass'] + 1}, epoch {ck['pass_state']['epoch']}).", stacklevel=2)
            if ck.get("world_size", 1) != self.world:
                warnings.warn(f"{path} was written by a {ck.get('world_size', 1)}-process run and is resumed "
                              f"with {self.world}; the run continues, but its numbers will not equal an "
                              f"uninterrupted {ck.get('world_size', 1)}-process run.", stacklevel=2)
            return ck
        if problems:
            warnings.warn(f"{' '.join(problems)} No earlier good checkpoint: restarting this run from the "
                          f"beginning.", stacklevel=2)
        return None

    def _restore(self, ck: dict, model: nn.Module, optimizer=None, scaler=None) -> None:
        model.load_state_dict(ck["model"])
        if ck["run_model"] is not None and model is not self.model:
            self.model.load_state_dict(ck["run_model"])
        if optimizer is not None:
            optimizer.load_state_dict(ck["optimizer"])
            scaler.load_state_dict(ck["scaler"])
        for k, v in ck["state"].items():
            if k not in self.state:
                raise RunFailure(f"checkpoint holds regime state '{k}' that the regime did not register on replay")
            if isinstance(self.state[k], nn.Module):
                self.state[k].load_state_dict(v)
            else:
                self.state[k].copy_(v) if isinstance(self.state[k], torch.Tensor) else self.state.__setitem__(k, v)
        self.passes = list(ck["passes"][: ck["pass"] + (1 if ck["complete"] else 0)])
        self.best = dict(ck["best"])
        self.extra = dict(ck.get("extra", {}))
        torch.set_rng_state(ck["rng"])
        if ck["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        # Drop per-epoch rows written after this checkpoint (the run died before its next save).
        path = self.dir / "metrics.jsonl"
        if self.rank == 0 and path.is_file():
            import json

            ps = ck["pass_state"]
            keep = []
            for ln in path.read_text().splitlines():
                try:
                    row = json.loads(ln)
                except ValueError:  # a line torn by a crash in the middle of its append
                    continue
                if (row["pass"], row["epoch"]) <= (ps["index"], ps["epoch"]):
                    keep.append(ln)
            results.write_text(path, "".join(ln + "\n" for ln in keep))

    def resumed_state(self, name: str):
        """On --resume, the value `run.state[name]` held in the checkpoint being resumed (None when not
        resuming, already restored, or absent). Between-pass results that depend on trained weights
        and change shapes (a pruned network's structure) cannot be replayed from the untrained
        weights a replay sees before the resumed pass restores them; a regime reads them back here."""
        return None if self._resume is None else self._resume["state"].get(name)

    def elapsed(self) -> float:
        return self._elapsed_before + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0)

    # ------------------------------------------------------------------ the whole run
    def execute(self) -> dict:
        """Run the regime, write result.json and the final model; return the result record."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            results.remove_stale_temps(self.dir)  # half-written files of a killed earlier attempt
        if self._resuming:
            self._resume = self._read_checkpoint()
            self._elapsed_before = self._resume["elapsed"] if self._resume else 0.0
        results.write_text(self.dir / "config.yaml", save_yaml(self.cfg))
        if self._resume is None and self.rank == 0:  # a fresh start: nothing of an earlier attempt stays
            for name in ("metrics.jsonl", CHECKPOINT, PREV_CHECKPOINT):
                (self.dir / name).unlink(missing_ok=True)
        self._t0 = time.perf_counter()
        try:
            self.regime.run(self)
        except RunFailure as exc:
            for m in self.monitors:
                m.close()
            record = self._record(status="failed", error=str(exc))
            results.write_json(self.dir / "result.json", record)
            return record
        for m in self.monitors:
            m.close()
        record = self._record(status="complete")
        results.save_torch(self.dir / "model.pt", {"arch": self.cfg.arch, "state_dict": self.model.state_dict()})
        results.write_json(self.dir / "result.json", record)
        if self.rank == 0:
            for name in (CHECKPOINT, PREV_CHECKPOINT):
                (self.dir / name).unlink(missing_ok=True)
        return record

    def _record(self, status: str, error: str | None = None) -> dict:
        from kebench.cost import inference_cost

        final = {}
        if self.passes:
            final = dict(self.passes[-1]["metrics"])
        final.update({k: v for k, v in self.extra.get("final", {}).items()})
        cost = {"dense": inference_cost(self.model, self.data, self.device)} if status == "complete" else {}
        cost.update(self.extra.get("cost", {}))
        train_flops = sum(p.get("train_flops", 0) for p in self.passes)
        record = {
            "schema": results.SCHEMA, "run_id": self.cfg.run_id(), "status": status,
            "method": self.method.name, "objective": self.method.objective.name, "regime": self.method.regime.name,
            "task": self.task, "arch": self.cfg.arch, "dataset": self.cfg.data, "seed": self.cfg.seed,
            "config": self.cfg.to_dict(), "data": self.data.info, "evaluation": metrics.describe(self.task, self.cfg.seed),
            "final": final, "best": self.best, "passes": self.passes,
            "cost": cost,
            "training": {"epochs": sum(p["epochs"] for p in self.passes), "steps": sum(p["steps"] for p in self.passes),
                         "images": sum(p["images"] for p in self.passes), "flops": train_flops,
                         "flops_convention": "torch.utils.flop_counter: 1 multiply-add = 2 FLOPs"},
            "wall_time_s": round(self.elapsed(), 3),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "versions": results.versions(), "git_commit": results.git_commit(),
            **{k: v for k, v in self.extra.items() if k not in ("final", "cost")},
        }
        record["training"]["device_hours"] = round(record["wall_time_s"] / 3600 * self.world, 6)
        if self.world > 1:
            record["distributed"] = {"world_size": self.world, "backend": torch.distributed.get_backend(),
                                     "batch_per_process": self.cfg.batch_size // self.world,
                                     "replicas_identical": distributed.replicas_identical([self.model, self.state])}
        if error:
            record["error"] = error
        return record


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def execute_all(cfg: RunConfig, *, resume: bool = False, show_progress: bool = True) -> list[dict]:
    """Run a config; with budget 'matched' and a multi-pass regime, also run its single-pass
    baseline with the same objective and the same total number of epochs (issue: fair comparisons).

    Each budget is its own run: a single long run cannot stand in for several budgets, because the
    cosine schedule of a shorter run is a different schedule, not a prefix of the longer one.
    """
    from kebench.config import matched_config

    records = [execute(cfg, resume=resume, show_progress=show_progress)]
    first = records[0]
    if cfg.budget == "matched" and cfg.method_spec.regime.name != "single" and first["status"] == "complete":
        matched = matched_config(cfg, first["training"]["epochs"])
        record = execute(matched, resume=True, show_progress=show_progress)  # reuse an existing baseline
        records.append(record)
    return records


def execute(cfg: RunConfig, *, resume: bool = False, show_progress: bool = True) -> dict:
    """Run one resolved config end to end (skipping it if `resume` and it already completed).

    The run folder is locked for the whole run (a second writer gets `guard.RunBusy`), and
    SIGTERM/SIGINT stop it at the end of the current step with a checkpoint (`guard.RunInterrupted`).
    """
    device = distributed.local_device(pick_device(cfg.device))
    distributed.init(device)
    world = distributed.world_size()
    if world > 1 and cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the "
                        f"{world} processes.")
    stop = guard.STOP.signum is not None
    if world > 1:  # all ranks start, or none does
        (stop,) = distributed.agree([stop], device)
    if stop:
        signum = guard.STOP.consume()
        raise guard.RunInterrupted(f"Stopped by {guard.signal_name(signum)} before run {cfg.run_id()} started; "
                                   f"rerun with --resume to continue.", signum)
    run_dir = Path(cfg.out) / cfg.run_id()
    if resume:
        done = results.read_result(run_dir)
        if done and done.get("status") == "complete":
            return done
    with guard.graceful_stop():
        run = Run(cfg, resume=resume, show_progress=show_progress)  # validates everything; creates no file
        try:
            with _exclusive(run_dir):
                if resume:  # it may have completed while we were loading
                    done = results.read_result(run_dir)
                    if done and done.get("status") == "complete":
                        return done
                return run.execute()
        except OSError as exc:
            error = results.storage_error(exc, exc.filename or run_dir)
            if error is None:
                raise
            raise error from None


#: What a checkpoint must hold to be resumed from (a file with a valid zip header but missing parts
#: is treated like a corrupt one: the run falls back to the checkpoint before it).
CHECKPOINT_KEYS = {"version": int, "run_id": str, "pass": int, "complete": bool, "pass_state": dict,
                   "model": dict, "optimizer": dict, "scaler": dict, "state": dict, "passes": list,
                   "best": dict, "extra": dict, "rng": torch.Tensor, "cuda_rng": list, "elapsed": float}


def checkpoint_problem(ck) -> str | None:
    """Why `ck` is not a usable checkpoint, or None."""
    if not isinstance(ck, dict):
        return f"holds a {type(ck).__name__}, not a mapping"
    missing = [k for k in (*CHECKPOINT_KEYS, "run_model") if k not in ck]
    if missing:
        return f"missing {', '.join(missing)}"
    wrong = [k for k, t in CHECKPOINT_KEYS.items() if not isinstance(ck[k], t)
             and not (t is float and isinstance(ck[k], int))]
    if wrong:
        return f"wrong type for {', '.join(wrong)}"
    fields = set(PassState.__dataclass_fields__)
    if set(ck["pass_state"]) != fields:
        return "its pass state does not match this kebench version"
    if not 0 <= ck["pass"] < len(ck["passes"]) + 1:
        return f"pass {ck['pass']} is out of range"
    return None


@contextlib.contextmanager
def _exclusive(run_dir: Path):
    """Rank 0 holds the run folder's lock; with several processes all ranks learn whether it got it."""
    lock, error = None, None
    if distributed.rank() == 0:
        try:
            lock = guard.RunLock(run_dir).acquire()
        except guard.RunBusy as exc:
            error = str(exc)
    if distributed.world_size() > 1:
        error = distributed.broadcast_object(error)
    if error:
        raise guard.RunBusy(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
