"""Run guards: one writer per run folder (a lock file), and a clean stop on SIGTERM/SIGINT.

* `RunLock(run_dir)` takes an exclusive `fcntl.flock` on `<run_dir>/.lock`. The kernel drops the
  lock when its process dies (even by SIGKILL), so a crashed run never leaves a stale lock; a second
  process with the same run id gets `RunBusy`, naming the holder.
* `graceful_stop()` turns SIGTERM/SIGINT into a request (`STOP`) that the engine honours at the next
  safe point (the end of the current training step): it writes a checkpoint and raises
  `RunInterrupted`, which the CLI turns into exit code 3. A second Ctrl-C aborts at once.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from kebench.errors import UserError

EXIT_FAILED = 1  # a run finished with status "failed" (e.g. a non-finite loss)
EXIT_USAGE = 2  # a user error (UserError)
EXIT_INTERRUPTED = 3  # stopped by a signal; a checkpoint was written: rerun with --resume
EXIT_BUSY = 4  # another process is writing the same run folder
EXIT_STORAGE = 5  # the results folder cannot be written (full disk, read-only, no permission): fix, --resume

LOCK_NAME = ".lock"


class RunInterrupted(Exception):
    """The run stopped at a safe point on a signal; its checkpoint resumes it exactly."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum


class RunBusy(UserError):
    """Another live process holds this run folder's lock."""

    exit_code = EXIT_BUSY


class _Stop:
    """The pending stop request: the number of the signal that asked for it, or None."""

    def __init__(self):
        self.signum: int | None = None

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = int(signum)

    def consume(self) -> int | None:
        signum, self.signum = self.signum, None
        return signum

    def clear(self) -> None:
        self.signum = None


STOP = _Stop()


def signal_name(signum: int | None) -> str:
    if signum is None:
        return "a signal"  # another rank received it
    try:
        return signal.Signals(signum).name
    except (ValueError, TypeError):
        return str(signum)


def _on_signal(signum, frame) -> None:
    if STOP.signum is not None and signum == signal.SIGINT and STOP.signum == signal.SIGINT:
        raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait for the checkpoint
    if STOP.signum is None:
        print(f"kebench: {signal_name(signum)} received; stopping after the current step and writing a "
              f"checkpoint (Ctrl-C again to abort at once).", file=sys.stderr, flush=True)
        STOP.request(signum)


@contextlib.contextmanager
def graceful_stop(signals=(signal.SIGTERM, signal.SIGINT), handler=None):
    """Within the block, the given signals request a stop instead of killing the process (or call
    `handler`, e.g. to forward them to child processes).

    Only the main thread can own signal handlers; elsewhere (a test thread) this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler or _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------------------- locks
class RunLock:
    """Exclusive lock on a run folder for the lifetime of the block.

    A busy lock is retried for `wait_s` seconds (a `kebench sweep --status` probe holds it only for
    microseconds) before `RunBusy` is raised.
    """

    def __init__(self, run_dir, wait_s: float = 2.0):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.wait_s = wait_s
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = _read_info(self.path)
                    raise RunBusy(
                        f"Run folder {self.run_dir} is being written by another process "
                        f"({_describe(holder)}). Two processes never write the same run: wait for it to "
                        f"finish (kebench sweep --status shows it as running), or stop it and rerun with "
                        f"--resume.") from None
                time.sleep(0.05)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_info(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "holder unknown"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}, since {started}"


def lock_holder(run_dir) -> dict | None:
    """Who holds the run folder's lock ({'pid', 'host', 'started'}), or None if nobody does."""
    import fcntl

    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_info(path) or {"pid": None, "host": None, "started": 0}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
