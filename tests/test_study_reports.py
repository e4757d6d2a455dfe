"""Every committed study report (docs/studies/<study>-<scale>/) was made from the study file that ships
(kebench/analysis/studies/<study>.yaml): its stated settings equal the file's (issue 24.2).

A report written by kebench since issue 24 embeds the settings block it was made from (report.md's
"Study settings" YAML: the scale's note, grid and set, the tables and figures), compared here in full;
an older report states only the note ("Settings: ..."), which must then equal the scale's note."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kebench.analysis import report, study

DOCS = Path(__file__).resolve().parent.parent / "docs" / "studies"
REPORTS = sorted(p.parent for p in DOCS.glob("*/report.md"))


def _embedded(md: str) -> dict | None:
    found = re.search(r"^## Study settings\n\n```yaml\n(.*?)\n```", md, re.S | re.M)
    return yaml.safe_load(found.group(1)) if found else None


def _which(folder: Path, block: dict | None) -> tuple[str, str]:
    if block is not None:
        return block["study"], block["scale"]
    name, _, scale = folder.name.rpartition("-")  # docs/studies/park-kd-pruning-mini
    return name, scale


def test_the_committed_reports_are_found():
    assert len(REPORTS) >= 3, REPORTS


@pytest.mark.parametrize("folder", REPORTS, ids=lambda p: p.name)
def test_a_committed_report_states_the_shipped_study_settings(folder):
    md = (folder / "report.md").read_text()
    block = _embedded(md)
    name, scale = _which(folder, block)
    assert name in study.names() and scale in study.SCALES, f"{folder.name}: no shipped study '{name}' ({scale})"
    shipped = study.load(name)
    stale = f"{folder} is stale: regenerate it with 'kebench study run {name} --scale {scale} --report-dir {folder}'"
    stated = re.search(r"^Settings: (.*)$", md, re.M)
    assert stated and stated.group(1) == shipped.note(scale), stale + " (its settings note differs)"
    html = (folder / "report.html").read_text()
    assert f"Settings: {report.html.escape(shipped.note(scale))}</p>" in html, stale + " (report.html's note differs)"
    if block is not None:
        assert block == yaml.safe_load(report.settings_block(shipped, scale)), stale + " (grid, set or tables differ)"


def test_the_settings_block_round_trips_through_the_markdown(tmp_path):
    """What the check above reads is what the report writer writes."""
    shipped = study.load("park-kd-pruning")
    md = report.render_markdown(shipped, "mini", [], [], [])
    block = _embedded(md)
    assert block["study"] == "park-kd-pruning" and block["scale"] == "mini"
    assert block["set"] == shipped.scales["mini"]["set"] and block["grid"] == shipped.scales["mini"]["grid"]
    assert block["note"] == shipped.note("mini") and block["tables"] == shipped.tables
