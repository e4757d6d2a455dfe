"""User-facing errors: one clear paragraph, exit code 2, never a traceback."""
from __future__ import annotations

import difflib


class UserError(Exception):
    """A mistake the user can fix (bad name, bad value, missing data). The CLI prints it and exits 2."""

    exit_code = 2


class RunFailure(Exception):
    """The run itself failed (a non-finite loss, a mutation that broke the network): the engine records
    it as status "failed" with this message in result.json, and no table averages it. Plugins raise it
    through `kebench.context.RunFailure`."""


def unknown_choice(kind: str, name: str, valid: list[str], hint: str = "") -> UserError:
    """Error for an unknown name that lists the valid ones and suggests close matches."""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
    msg = f"Unknown {kind} '{name}'."
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    msg += f" Valid {kind}s: {shown}."
    if hint:
        msg += " " + hint
    return UserError(msg)
