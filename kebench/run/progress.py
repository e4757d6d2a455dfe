"""A rich progress bar per pass: epoch, loss, accuracy, images/s, and the time left. Silent when disabled."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

# soft_wrap: a line written to a log file stays one line (rich would wrap it at 80 columns)
console = Console(stderr=True, soft_wrap=True)


def duration(seconds: float) -> str:
    """12 s, 3m05s, 2h07m: short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, enabled: bool, description: str, eta=None):
        self.enabled = enabled  # per-epoch lines on stderr
        self.live = enabled and console.is_terminal  # the animated bar only on a terminal
        self.description = description
        self.eta = eta  # row -> "ETA run 3m05s" (or None): the time left, said after each epoch
        self._bar = None
        self._task = None

    def __enter__(self):
        if self.live:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console, transient=True,
                refresh_per_second=4)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(f"{self.description} epoch {epoch}/{epochs}", total=steps, stats="")

    def step(self, n_images: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def end_epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {row['epoch']}", f"loss {row['loss']:.3f}"]
        if row.get("train_top1") is not None:
            parts.append(f"train {row['train_top1']:.3f}")
        for k, v in (row.get("test") or {}).items():
            parts.append(f"test {k} {v:.3f}")
        parts.append(f"{row['images_per_s']:.0f} img/s")
        left = self.eta(row) if self.eta is not None else None
        if left:
            parts.append(left)
        console.print(f"[dim]{self.description}[/dim] " + " · ".join(parts))
