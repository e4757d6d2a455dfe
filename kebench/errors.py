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


def article(word: str) -> str:
    """'a' or 'an' before `word` (by its first letter: an objective, a regime)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def plural(word: str) -> str:
    """study -> studies, arch -> archs, setting value -> setting values."""
    if word.endswith("y") and word[-2:-1].lower() not in "aeiou":
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("s", "x", "sh")) else "s")  # archs, as kebench says


def did_you_mean(names, valid) -> str:
    """' (did you mean X for Y?)' for misspelt keys that are close to a valid one, else ''."""
    pairs = [(n, difflib.get_close_matches(str(n), [str(v) for v in valid], n=1, cutoff=0.6)) for n in names]
    found = [f"{close[0]} for {n}" for n, close in pairs if close]
    return f" (did you mean {', '.join(found)}?)" if found else ""


def unknown_choice(kind: str, name: str, valid: list[str], hint: str = "", show_valid: bool = True) -> UserError:
    """Error for an unknown name that suggests close matches and lists the valid ones (with
    show_valid=False only the suggestions: a list of a thousand names helps nobody)."""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
    msg = f"Unknown {kind} '{name}'."
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    if show_valid or not close:
        msg += f" Valid {plural(kind)}: {shown}."
    if hint:
        msg += " " + hint
    return UserError(msg)
