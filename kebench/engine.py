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
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kebench import data as datasets
from kebench import metrics, results
from kebench.config import RunConfig, save_yaml
from kebench.data.pipeline import BatchStream, epoch_generator
from kebench.errors import UserError
from kebench.models import count_params, create_model
from kebench.plugin import Hook
from kebench.progress import Progress

PRIMARY = {"classification": "top1", "retrieval": "r@1"}
CHECKPOINT = "checkpoint.pt"


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


def lr_at(base: float, epoch_pos: float, total: int, warmup: int, schedule: str) -> float:
    """Learning rate at a (fractional) epoch position: linear warm-up, then cosine decay to 0."""
    if warmup and epoch_pos < warmup:
        return base * (epoch_pos + 1) / warmup if epoch_pos == int(epoch_pos) else base * epoch_pos / warmup
    if schedule == "constant":
        return base
    span = max(total - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * (epoch_pos - warmup) / span))


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


class Run:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, show_progress: bool = True):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.dir = Path(cfg.out) / cfg.run_id()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.show_progress = show_progress
        seed_everything(cfg.seed)
        self.data = datasets.load(cfg)
        self.task = self.data.task
        self.primary = PRIMARY[self.task]
        self.method = cfg.method_spec
        on_cuda = self.device.type == "cuda"
        self.amp_dtype = {"auto": torch.bfloat16 if on_cuda else None, "bf16": torch.bfloat16,
                          "fp16": torch.float16, "off": None}[cfg.amp]
        self.channels_last = on_cuda if cfg.channels_last is None else cfg.channels_last
        self.objective = self.method.objective.load()(cfg.plugin_params(self.method.objective.name), self)
        self.regime = self.method.regime.load()(cfg.plugin_params(self.method.regime.name), self)
        self.model = self.build_model()
        self.state: dict[str, nn.Module | torch.Tensor] = {}
        self.passes: list[dict] = []
        self.best: dict = {}
        self.extra: dict = {}  # run-level facts a regime wants in result.json
        self._pass_counter = 0
        self._resume = self._read_checkpoint() if resume else None
        self._elapsed_before = self._resume["elapsed"] if self._resume else 0.0
        self._streams: dict[str, BatchStream] = {}
        self._last_save = time.perf_counter()

    # ------------------------------------------------------------------ building blocks
    def build_model(self, arch: str | None = None, **kwargs) -> nn.Module:
        """A fresh model for this run's data and objective, on the run's device."""
        model = create_model(arch or self.cfg.arch, self.data.num_classes, self.data.in_chans, **kwargs)
        model = self.objective.adapt_model(model, self.data.num_classes)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def stream(self, split: str = "train") -> BatchStream:
        if split not in self._streams:
            source = getattr(self.data, split)
            if source is None:
                raise UserError(f"Dataset '{self.cfg.data}' has no {split} split.")
            self._streams[split] = BatchStream(
                self.data, source, batch_size=self.cfg.batch_size if split == "train" else max(self.cfg.batch_size, 256),
                device=self.device, train=split == "train", channels_last=self.channels_last)
        return self._streams[split]

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

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
            lr_window: tuple[int, int] | None = None, after=None) -> dict:
        """Train `model` (default: run.model) for one pass with a fresh optimizer and LR schedule.

        lr_window=(offset, total) continues one schedule of `total` epochs across passes (DSD).
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
        hooks = list(hooks) + objective.hooks()

        ps = PassState(index=index, kind=kind, label=label, epochs=epochs)
        params = [*model.parameters(), *objective.extra_parameters(model)]
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

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

        offset, total = lr_window or (0, epochs)
        # torch.compile shares the parameters; the FLOP-counting first step runs eagerly (the
        # counter sees aten ops, which compiled kernels bypass).
        compiled = torch.compile(model) if cfg.compile else model
        train = self.stream("train")
        steps_per_epoch = None
        progress = Progress(enabled=self.show_progress, description=f"{self.method.name} {kind} {label}")
        with progress:
            for epoch in range(ps.epoch, epochs):
                model.train()
                objective.train_mode(model)
                gen = epoch_generator(cfg.seed, index, epoch)
                batches = train.batches(gen, objective.batch_sampler(train.labels.cpu(), cfg.batch_size, gen))
                steps_per_epoch = len(batches)
                progress.start_epoch(epoch + 1, epochs, steps_per_epoch)
                loss_sum = torch.zeros((), device=self.device)
                correct = torch.zeros((), device=self.device)
                seen = scored = 0  # scored: samples the objective returned logits for (CS-KD: anchors only)
                t0 = time.perf_counter()
                for step, index_batch in enumerate(batches):
                    pos = offset + epoch + (step / steps_per_epoch if cfg.lr_per == "step" else 0)
                    lr = lr_at(cfg.lr, pos, total, cfg.warmup_epochs, cfg.lr_schedule)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    x, y = train.load(index_batch, gen)
                    count_flops = ps.step_flops is None
                    with (FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()) as counter:
                        with self.autocast():
                            loss, logits = objective.loss(model if count_flops else compiled, x, y)
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                    if count_flops:
                        ps.step_flops = int(counter.get_total_flops())
                    for hook in hooks:
                        hook.before_step(model, optimizer)
                    scaler.step(optimizer)
                    scaler.update()
                    for hook in hooks:
                        hook.after_step(model, optimizer)
                    loss_sum += loss.detach().float() * len(y)
                    if logits is not None:
                        correct += (logits.detach().argmax(1) == y[: len(logits)]).sum()
                        scored += len(logits)
                    seen += len(y)
                    ps.steps += 1
                    progress.step(len(y))
                    if step % 20 == 0 and not torch.isfinite(loss.detach()):
                        self._fail_nonfinite(ps, epoch, loss)
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
                ps.epoch = epoch + 1
                ps.history.append(row)
                self._append_metrics(row)
                if not last and time.perf_counter() - self._last_save >= cfg.checkpoint_every_s:
                    self._save_checkpoint(model, optimizer, scaler, ps, complete=False)

        test = ps.history[-1]["test"] if ps.history and "test" in ps.history[-1] else self.evaluate(model)
        record = {"kind": kind, "index": label, "epochs": epochs, "steps": ps.steps, "images": ps.images,
                  "step_flops": ps.step_flops, "train_flops": (ps.step_flops or 0) * ps.steps,
                  "wall_time_s": round(ps.wall_time_s, 3), "metrics": dict(test)}
        if after is not None:
            for key, value in after(model).items():  # dict values (e.g. "hypotheses") go beside "metrics"
                (record if isinstance(value, dict) else record["metrics"])[key] = value
        self.passes.append(record)
        self._save_checkpoint(model, optimizer, scaler, ps, complete=True)
        return record

    def _fail_nonfinite(self, ps: PassState, epoch: int, loss) -> None:
        raise RunFailure(f"non-finite loss ({float(loss)}) in {ps.kind} {ps.label}, epoch {epoch + 1}; "
                         f"lower --lr or check the data. No result is reported for this run.")

    def _track_best(self, test: dict, index: int, label: int, epoch: int) -> None:
        value = test.get(self.primary)
        if value is not None and (not self.best or value > self.best[self.primary]):
            self.best = {self.primary: value, "pass": index + 1, "label": label, "epoch": epoch}

    # ------------------------------------------------------------------ persistence
    def _append_metrics(self, row: dict) -> None:
        import json

        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(results._clean(row)) + "\n")

    def _state_dicts(self) -> dict:
        return {k: (v.state_dict() if isinstance(v, nn.Module) else v) for k, v in self.state.items()}

    def _save_checkpoint(self, model, optimizer, scaler, ps: PassState, complete: bool) -> None:
        ckpt = {
            "version": 1, "run_id": self.cfg.run_id(), "pass": ps.index, "complete": complete,
            "pass_state": {k: getattr(ps, k) for k in PassState.__dataclass_fields__},
            "model": model.state_dict(), "run_model": None if model is self.model else self.model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "state": self._state_dicts(), "passes": self.passes, "best": self.best, "extra": self.extra,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "elapsed": self.elapsed(),
        }
        results.save_torch(self.dir / CHECKPOINT, ckpt)
        self._last_save = time.perf_counter()

    def _read_checkpoint(self) -> dict | None:
        path = self.dir / CHECKPOINT
        if not path.is_file():
            return None
        try:
            ck = results.load_torch(path)
        except results.CorruptCheckpoint as exc:
            import warnings

            warnings.warn(f"{exc} Restarting this run from the beginning.", stacklevel=2)
            return None
        if ck.get("run_id") != self.cfg.run_id():
            return None
        return ck

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
        if path.is_file():
            import json

            ps = ck["pass_state"]
            keep = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and (json.loads(ln)["pass"], json.loads(ln)["epoch"]) <= (ps["index"], ps["epoch"])]
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
        results.write_text(self.dir / "config.yaml", save_yaml(self.cfg))
        if self._resume is None and (self.dir / "metrics.jsonl").exists():
            (self.dir / "metrics.jsonl").unlink()
        self._t0 = time.perf_counter()
        try:
            self.regime.run(self)
        except RunFailure as exc:
            record = self._record(status="failed", error=str(exc))
            results.write_json(self.dir / "result.json", record)
            return record
        record = self._record(status="complete")
        results.save_torch(self.dir / "model.pt", {"arch": self.cfg.arch, "state_dict": self.model.state_dict()})
        results.write_json(self.dir / "result.json", record)
        (self.dir / CHECKPOINT).unlink(missing_ok=True)
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
        record["training"]["device_hours"] = round(record["wall_time_s"] / 3600, 6)
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
    """Run one resolved config end to end (skipping it if `resume` and it already completed)."""
    if resume:
        done = results.read_result(Path(cfg.out) / cfg.run_id())
        if done and done.get("status") == "complete":
            return done
    return Run(cfg, resume=resume, show_progress=show_progress).execute()
