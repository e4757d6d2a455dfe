"""The run: `Run` is the façade plugins see (`kebench.context.RunContext`), and `execute` runs one
config end to end. The pieces with one job each live beside it:

* `kebench.run.loop` — THE training loop (`PassLoop`: one pass, its epochs and steps, LR schedules);
* `kebench.run.checkpoint` — checkpoint contents, writing, reading/validating, restoring, replay;
* `kebench.run.record` — the result record (result.json);
* `kebench.run.distributed` — the process policy (`SingleProcess` no-ops, `MultiProcess` for DDP).

Resume works by deterministic replay: a regime's `run()` is executed again from the top; every
`fit()` call the checkpoint says is finished returns its recorded pass without training, and the
checkpointed state (model, optimizer, registered regime state, RNG) is loaded at the exact point
where the interrupted run stopped. Regimes therefore must keep any state that outlives a pass in
`run.state` (modules or tensors), which is checkpointed with the model.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from kebench.run import analyses
from kebench.run import checkpoint
from kebench.run import distributed
from kebench.run import guard
from kebench.run import metrics
from kebench.run import monitor
from kebench.run import record
from kebench.run import results
from kebench import data as datasets
from kebench import registry
from kebench.run.checkpoint import CHECKPOINT, PREV_CHECKPOINT, PassState, checkpoint_problem  # noqa: F401
from kebench.config import RunConfig, save_yaml
from kebench.context import NOT_THE_MODEL, RECORD
from kebench.data.pipeline import BatchStream
from kebench.run.device import DevicePolicy
from kebench.run.threads import ThreadPolicy
from kebench.errors import RunFailure, UserError
from kebench.run.loop import SCHEDULES, LRPlan, PassLoop, effective_warmup, lr_factor, lr_scheduler  # noqa: F401
from kebench.nets.models import check_input_size, create_model
from kebench.plugin import Hook, Objective
from kebench.run.progress import Progress  # noqa: F401  (tests patch Progress.step through here)
from kebench.run.state import RunState

CHECK_EVERY = distributed.CHECK_EVERY


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


class Run:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, show_progress: bool = True,
                 policy: DevicePolicy | None = None):
        self.cfg = cfg
        self.device = distributed.local_device(pick_device(cfg.device))
        self.processes = distributed.policy(self.device)  # rank 0 writes every file
        self.dir = Path(cfg.out) / cfg.run_id()  # created by execute(): a config that fails here leaves nothing
        self.show_progress = show_progress and self.rank == 0
        seed_everything(cfg.seed)
        self.data = datasets.load(cfg)
        self.task = self.data.task
        self.primary = datasets.get_task(self.task).headline
        self.method = cfg.method_spec
        self.policy = policy or DevicePolicy.for_run(cfg, self.device)  # AMP, layout, compile, data placement
        self.policy.apply_backend()
        # CPU threads: the cores other work leaves free (kebench/run/threads.py); a GPU run keeps torch's
        self.threads = ThreadPolicy.from_env() if self.device.type == "cpu" else ThreadPolicy(torch.get_num_threads())
        self.amp_dtype, self.channels_last = self.policy.amp_dtype, self.policy.channels_last
        self.objective = self.method.objective.load()(cfg.plugin_params(self.method.objective.name), self)
        self.regime = self.method.regime.load()(cfg.plugin_params(self.method.regime.name), self)
        self.model = self.build_model()
        check_input_size(self.model, cfg.arch, self.data.in_chans, self.data.resolution, cfg.data)
        self._check_batch_size()
        self.state: dict[str, nn.Module | torch.Tensor] = {}
        #: What the run accumulates (passes, best, reported facts, resume position, clocks): shared with
        #: the loop, the checkpoint and the record through this one object.
        self.book = RunState()
        self._resuming = resume
        self._streams: dict[str, BatchStream] = {}
        self._last_fit: tuple[nn.Module, nn.Module] | None = None  # (network trained, run.model then)
        #: (passes, epochs) the regime said it will train in all (`plan`); None until it says.
        self.planned: tuple[int, int] | None = None
        self.monitors = monitor.hooks_for(self)  # TensorBoard when KEBENCH_TENSORBOARD=1

    @property
    def passes(self) -> list[dict]:
        """Records of the finished passes (a plugin reads them; only fit() adds to them)."""
        return self.book.passes

    @property
    def best(self) -> dict:
        return self.book.best

    @property
    def world(self) -> int:
        return self.processes.world

    @property
    def rank(self) -> int:
        return self.processes.rank

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
        model = create_model(arch or self.cfg.arch, self.data.num_classes, self.data.in_chans, init=self.cfg.init,
                             **kwargs)
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

        kind: a `kebench.context.PassKind` or a kind the method's plugins declare (`passes:`). lr, schedule ("cosine" |
        "constant"), warmup: this pass's peak LR, schedule and warm-up epochs (default: --lr,
        --lr-schedule, --warmup-epochs), e.g. a short constant-LR fine-tune.
        lr_window=(offset, total) continues one schedule of `total` epochs across passes (DSD, RePr);
        its warm-up opens the whole window, not each pass.
        after(model) -> dict adds pass-level metrics (slim accuracy) to the record; per-pass record
        entries (e.g. per-layer "hypotheses") go under its `context.RECORD` key, beside "metrics".
        Returns the pass record (also appended to run.passes).
        """
        epochs = epochs or self.cfg.epochs
        model = model if model is not None else self.model
        objective = objective or self.objective
        kind = str(kind)
        if kind not in registry.pass_kinds(self.method):
            raise UserError(f"Method '{self.method.name}' trains a pass of kind '{kind}', which neither kebench "
                            f"nor its plugins declare (declared: {', '.join(registry.pass_kinds(self.method))}). "
                            f"List the plugin's own pass kinds under 'passes:' in its registry entry.")
        index = self.book.next_fit()
        label = label if label is not None else index + 1
        lr_plan = LRPlan.of(self, kind, epochs, lr, schedule, warmup, lr_window)
        hooks = list(hooks) + objective.hooks() + self.monitors + analyses.pass_hooks(self, kind, lr_plan, epochs)

        if kind not in NOT_THE_MODEL:
            self._last_fit = (model, self.model)
        params = [*model.parameters(), *objective.extra_parameters(model)]
        optimizer = torch.optim.SGD(params, lr=lr_plan.peak, momentum=self.cfg.momentum,
                                    weight_decay=self.cfg.weight_decay)
        scaler = self.policy.grad_scaler()
        done, ps = checkpoint.replay(self, index, model, optimizer, scaler)
        if done is not None:
            return done
        ps = ps or PassState(index=index, kind=kind, label=label, epochs=epochs)
        stopped = PassLoop(self, ps, model, objective, hooks, lr_plan, optimizer, scaler, params).run_pass()

        test = ps.history[-1]["test"] if ps.history and "test" in ps.history[-1] else self.evaluate(model)
        rec = {"kind": kind, "index": label, "epochs": epochs, "steps": ps.steps, "images": ps.images,
               "step_flops": ps.step_flops, "train_flops": (ps.step_flops or 0) * ps.steps,
               "wall_time_s": round(ps.wall_time_s, 3), "metrics": dict(test), "lr": lr_plan.describe()}
        if stopped:
            rec.update(epochs=ps.epoch, planned_epochs=epochs, stopped=stopped)
        if after is not None:
            _add_after(rec, after(model), self.method.name)
        self.book.passes.append(rec)
        for hook in hooks:
            if hasattr(hook, "pass_end"):  # hooks written against an older Hook have no pass_end
                hook.pass_end(rec)
        self.save_checkpoint(model, optimizer, scaler, ps, complete=True)
        return rec

    def reported_network(self) -> nn.Module:
        """The network the run's final metrics describe, which the analyses score: the last pass's (a
        pruned student is fine-tuned beside run.model), unless the regime set run.model after that
        pass (a search's best member)."""
        if self._last_fit is not None and self._last_fit[1] is self.model:
            return self._last_fit[0]
        return self.model

    # ------------------------------------------------------------------ what regimes report
    def report(self, name: str, value):
        """Record a run-level fact, written as result.json[name]; returns `value` (a dict may still be
        filled in afterwards). Names of the schema's own fields are refused: use report_final /
        report_cost for contributions to "final" and "cost"."""
        if name in record.SCHEMA_FIELDS:
            raise ValueError(f"{self.method.name}: run.report('{name}') would overwrite the result.json schema "
                             f"field '{name}'; report the fact under a name of its own"
                             f"{' (or use run.report_' + name + ')' if name in (record.FINAL, record.COST) else ''}.")
        self.book.facts[name] = value
        return value

    def reported(self, name: str, default=None):
        """A fact reported earlier in this run (or restored from its checkpoint on resume)."""
        return self.book.facts.get(name, default)

    def report_final(self, values: dict) -> dict:
        """Add headline numbers to result.json["final"] (over the last pass's metrics)."""
        return self.book.contribute(record.FINAL, values)

    def report_cost(self, values: dict) -> dict:
        """Add entries to result.json["cost"] (beside the engine's "dense" inference cost)."""
        return self.book.contribute(record.COST, values)

    # ------------------------------------------------------------------ persistence (the loop calls these)
    def append_metrics(self, row: dict) -> None:
        """Append one epoch's row to metrics.jsonl (rank 0)."""
        if self.rank != 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)  # a regime driven without execute() (tests, notebooks)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(results._clean(row)) + "\n")
        monitor.write_csv(self.dir)

    def save_checkpoint(self, model, optimizer, scaler, ps: PassState, complete: bool) -> None:
        """Checkpoint the run at the end of pass `ps` (complete) or inside it."""
        checkpoint.save(self, model, optimizer, scaler, ps, complete)

    def resumed_state(self, name: str):
        """On --resume, the value `run.state[name]` held in the checkpoint being resumed (None when not
        resuming, already restored, or absent). Between-pass results that depend on trained weights
        and change shapes (a pruned network's structure) cannot be replayed from the untrained
        weights a replay sees before the resumed pass restores them; a regime reads them back here."""
        resume = self.book.resume
        return None if resume is None else resume["state"].get(name)

    def plan(self, passes: int, epochs: int) -> None:
        """The regime announces how many passes and epochs it will train in all (DSD's phases, RePr's
        cycles, a search's individuals), so each pass is named "pass k/N" and the time left is the
        whole run's. Announced again on a resume's replay; a pass a hook ends early (an extinct
        individual) takes its unused epochs off the time left."""
        self.planned = (int(passes), int(epochs))

    def planned_passes(self, kind: str) -> int | None:
        """How many passes of `kind` the run makes, when its regime says (KE, BANs: generations)."""
        n = self.cfg.plugin_params(self.method.regime.name).get("generations")
        return n if kind == "generation" and isinstance(n, int) and n > 0 else None

    def pass_name(self, kind: str, label: int, index: int | None = None) -> str:
        """'generation 3/10', 'phase 2, pass 2/3' once the regime announced its plan, else 'phase 2'
        (`index`: the pass's position in the run, from 0)."""
        total = self.planned_passes(kind)
        if total:
            return f"{kind} {label}/{total}"
        if self.planned and index is not None:
            return f"{kind} {label}, pass {index + 1}/{self.planned[0]}"
        return f"{kind} {label}"

    def eta(self, row: dict, pass_epochs: int) -> str | None:
        """Time left after the epoch of metrics row `row`: of the whole run when its passes are known
        (generations, or the regime's `plan`), else of the pass; estimated from the run's mean epoch
        time so far."""
        done = sum(p["epochs"] for p in self.passes) + row["epoch"]
        total_passes = self.planned_passes(row["kind"])
        if total_passes:
            left, what = total_passes * pass_epochs - done, "run"
        elif self.planned:
            started = sum(p.get("planned_epochs", p["epochs"]) for p in self.passes) + row["epoch"]
            left, what = self.planned[1] - started, "run"
        else:
            left, what = pass_epochs - row["epoch"], "pass"
        if left <= 0 or done <= 0:
            return None
        from kebench.run.progress import duration

        return f"ETA {what} {duration(self.elapsed() / done * left)}"

    def _say_resuming(self, ck: dict) -> None:
        """One line on where the run continues."""
        if self.rank == 0 and self.show_progress:
            from kebench.run.progress import console

            console.print(f"[dim]{self.cfg.run_id()}:[/dim] resuming from {checkpoint.position(ck)}", highlight=False)

    def _note_threads(self, ck: dict | None) -> None:
        """A note when a resumed run trains with another CPU thread count than its checkpoint was
        written with (CPU kernels then sum in another order: the last digits move)."""
        before, now = (ck or {}).get("threads"), torch.get_num_threads()
        if self.rank == 0 and before is not None and before != now:
            from kebench.run.progress import console
            from kebench.run.threads import ENV

            console.print(f"note: {self.cfg.run_id()} was checkpointed with {before} CPU thread{'s' * (before != 1)} "
                          f"and resumes with {now}; its numbers may differ in the last digits from an uninterrupted run "
                          f"(set {ENV}={before} to match).", highlight=False)

    def elapsed(self) -> float:
        return self.book.elapsed()

    # ------------------------------------------------------------------ the whole run
    def execute(self) -> dict:
        """Run the regime, write result.json and the final model; return the result record."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            results.remove_stale_temps(self.dir)  # half-written files of a killed earlier attempt
        book = self.book
        if self._resuming:
            book.resume = checkpoint.read(self.dir, self.cfg.run_id(), self.world)
            book.elapsed_before = book.resume["elapsed"] if book.resume else 0.0
            if book.resume is not None:
                self._say_resuming(book.resume)
        results.write_text(self.dir / "config.yaml", save_yaml(self.cfg))
        if book.resume is None and self.rank == 0:  # a fresh start: nothing of an earlier attempt stays
            for name in ("metrics.jsonl", CHECKPOINT, PREV_CHECKPOINT, "result.json"):
                (self.dir / name).unlink(missing_ok=True)
        book.start()
        threads_before = torch.get_num_threads()
        self.threads.start()
        self._note_threads(book.resume)
        try:
            self.regime.run(self)
        except RunFailure as exc:
            for m in self.monitors:
                m.close()
            rec = record.build(self, status="failed", error=str(exc))
            results.write_json(self.dir / "result.json", rec)
            return rec
        finally:
            torch.set_num_threads(threads_before)  # a library caller's setting survives the run
        for m in self.monitors:
            m.close()
        scores, records = analyses.run_analyses(self, self.cfg.analyses)
        if scores:
            self.report_final(scores)
        rec = record.build(self, status="complete")
        if records:
            rec["analyses"] = records
        results.save_torch(self.dir / "model.pt", {"arch": self.cfg.arch, "state_dict": self.model.state_dict()})
        results.write_json(self.dir / "result.json", rec)
        if self.rank == 0:
            for name in (CHECKPOINT, PREV_CHECKPOINT):
                (self.dir / name).unlink(missing_ok=True)
        return rec


#: Keys of a pass record the engine writes; `after()`'s record entries may not replace them.
PASS_FIELDS = frozenset({"kind", "index", "epochs", "steps", "images", "step_flops", "train_flops", "wall_time_s",
                         "metrics", "lr", "planned_epochs", "stopped"})


def _add_after(rec: dict, out: dict, method: str) -> None:
    """Put what `fit(after=...)` returned into the pass record: metrics into "metrics", the entries
    under `context.RECORD` beside it."""
    out = dict(out)
    entries = out.pop(RECORD, {})
    nested = [k for k, v in out.items() if isinstance(v, dict)]
    clash = sorted(PASS_FIELDS & set(entries))
    if nested or clash:
        raise TypeError(f"{method}: fit(after=...) returned "
                        + (f"dict-valued metrics {nested}; per-pass record entries go under after()['{RECORD}']"
                           if nested else f"record entries {clash} that would overwrite the pass record's own"))
    rec["metrics"].update(out)
    rec.update(entries)


def execute_all(cfg: RunConfig, *, resume: bool = False, show_progress: bool = True) -> list[dict]:
    """Run a config; with budget 'matched' and a multi-pass regime, also run its single-pass
    baseline with the same objective and the same total number of epochs, or the same training FLOPs
    for a regime that changes the network (kebench/run/budget.py).

    Each budget is its own run: a single long run cannot stand in for several budgets, because the
    cosine schedule of a shorter run is a different schedule, not a prefix of the longer one.
    """
    from kebench.run import budget

    records = [execute(cfg, resume=resume, show_progress=show_progress)]
    first = records[0]
    if cfg.budget == "matched" and cfg.method_spec.regime.name != "single" and first["status"] == "complete":
        matched, _ = budget.baseline(cfg, first, epoch_train_flops)
        record = execute(matched, resume=True, show_progress=show_progress)  # reuse an existing baseline
        records.append(record)
    return records


def prior_state(cfg: RunConfig) -> tuple[str | None, str]:
    """What an earlier attempt left in this config's run folder: ("complete", headline), ("interrupted",
    where its checkpoint resumes), ("failed", why) or (None, "")."""
    run_dir = Path(cfg.out) / cfg.run_id()
    done = results.read_result(run_dir)
    if done and done.get("status") == "complete":
        final = done.get("final") or {}
        primary = next((k for k in ("top1", "r@1") if isinstance(final.get(k), (int, float))), None)
        return "complete", f"{primary} {final[primary]:.4f}" if primary else "complete"
    ck = checkpoint.peek(run_dir) if run_dir.is_dir() else None
    if ck is not None and ck["run_id"] == cfg.run_id():
        return "interrupted", checkpoint.position(ck)
    if done and done.get("status") == "failed":
        return "failed", str(done.get("error", ""))
    return None, ""


def epoch_train_flops(cfg) -> int:
    """Training FLOPs of one epoch of `cfg` as a single pass: one step of its first batch counted the
    way the training loop counts it (forward and backward under torch's FlopCounterMode), times the
    steps per epoch."""
    from torch.utils.flop_counter import FlopCounterMode

    from kebench.data.pipeline import epoch_generator

    run = Run(cfg, show_progress=False)  # builds the data and the network; writes nothing
    stream = run.stream("train")
    gen = epoch_generator(cfg.seed, 0, 0)
    batches = stream.batches(gen, run.objective.batch_sampler(stream.labels.cpu(), cfg.batch_size, gen))
    x, y = stream.load(batches[0], gen)
    run.model.train()
    run.objective.train_mode(run.model)
    with FlopCounterMode(display=False) as counter:
        with run.autocast():
            loss, _ = run.objective.loss(run.model, x, y)
        loss.backward()
    run.model.zero_grad(set_to_none=True)
    del run
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return int(counter.get_total_flops()) * len(batches)


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
    (stop,) = distributed.policy(device).agree([stop])  # all ranks start, or none does
    if stop:
        signum = guard.STOP.consume()
        raise guard.RunInterrupted(f"Stopped by {guard.signal_name(signum)} before run {cfg.run_id()} started; "
                                   f"rerun with --resume to continue.", signum)
    run_dir = Path(cfg.out) / cfg.run_id()
    results.check_out(cfg.out)
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
                try:
                    return run.execute()
                except (guard.RunInterrupted, KeyboardInterrupt, results.StorageError):
                    raise  # resumable: the folder keeps its checkpoint and says "interrupted"
                except Exception as exc:
                    _record_crash(run, exc)
                    raise
        except OSError as exc:
            error = results.storage_error(exc, exc.filename or run_dir)
            if error is None:
                raise
            raise error from None




def _record_crash(run: Run, exc: Exception) -> None:
    """A run that crashed (an error, not a stop) is recorded as failed, with why, so no half-made
    folder is taken for an interrupted run; a checkpoint it wrote stays for --resume."""
    why = str(exc) if isinstance(exc, UserError) else f"crashed: {type(exc).__name__}: {exc}"
    try:
        results.write_json(run.dir / "result.json", record.build(run, status="failed", error=why))
    except Exception:  # noqa: BLE001 - the original error is the one to show
        pass


@contextlib.contextmanager
def _exclusive(run_dir: Path):
    """Rank 0 holds the run folder's lock; with several processes all ranks learn whether it got it."""
    lock, error, procs = None, None, distributed.policy(torch.device("cpu"))
    if procs.rank == 0:
        try:
            lock = guard.RunLock(run_dir).acquire()
        except guard.RunBusy as exc:
            error = str(exc)
    error = procs.share(error)
    if error:
        raise guard.RunBusy(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
