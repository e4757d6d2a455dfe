"""docs/extending.md's examples run as printed: a dataset, a network, a table kind, a figure kind and an
executor, each registered through registry.yaml (and, without registry.yaml, through entry points)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from kebench import registry
from kebench.errors import UserError

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
SECTIONS = {"A dataset": "datasets", "A network": "networks", "A table kind": "tables",
            "A figure kind": "figures", "An executor": "executors"}


def examples() -> dict[str, tuple[str, str, dict]]:
    """section -> (module name, module source, its registry entries) as the doc prints them."""
    found = {}
    for part in DOC.read_text(encoding="utf-8").split("\n## ")[1:]:
        title = part.splitlines()[0].strip()
        if title not in SECTIONS:
            continue
        code = re.findall(r"```python\n(.*?)```", part, re.S)
        entry = re.findall(r"```yaml\n(.*?)```", part, re.S)
        assert len(code) == len(entry) == 1, f"'{title}' must print one module and one registry entry"
        module = re.match(r'"""(\w+)\.py: ', code[0]).group(1)
        found[SECTIONS[title]] = (module, code[0], yaml.safe_load(entry[0]))
    assert set(found) == set(SECTIONS.values())
    return found


def _with_entries(text: str, entries: dict) -> str:
    """registry.yaml's text with `entries` ({section: {name: module:attr}}) added to its sections."""
    for section, items in entries.items():
        lines = "".join(f"  {name}: {value}\n" for name, value in items.items())
        header = f"{section}:\n"
        text = text.replace(header, header + lines, 1) if re.search(rf"(?m)^{section}:$", text) else header + lines + text
    return text


@pytest.fixture
def doc_modules(tmp_path, monkeypatch):
    found = examples()
    for module, code, _ in found.values():
        (tmp_path / f"{module}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield found
    for module, _, _ in found.values():
        sys.modules.pop(module, None)
    registry.reload()


def test_every_example_runs_through_registry_yaml(doc_modules, tmp_path, monkeypatch, make_cfg):
    from kebench import data
    from kebench.analysis import plots, tables
    from kebench.grid import EXECUTORS, executors
    from kebench.grid.sweep import SweepRun
    from kebench.nets.models import create_model, list_archs

    extended = tmp_path / "registry.yaml"
    entries = {section: doc_modules[section][2][section] for section in doc_modules}
    extended.write_text(_with_entries(registry.registry_path().read_text(), entries))
    monkeypatch.setattr(registry, "registry_path", lambda: extended)
    registry.reload()

    assert "stripes" in data.names() and "tiny_cnn" in list_archs("tiny*")
    assert tables.kind_names()[-1] == "seeds" and plots.figure_names()[-2:] == ["epochs", "search"]
    assert EXECUTORS.names()[-1] == "reverse"
    net = create_model("tiny_cnn", num_classes=3)
    assert net.get_classifier().out_features == 3 and sum(p.numel() for p in net.parameters()) == 5235  # 432+32+4608+64+99

    # Train the doc's network on the doc's dataset, two seeds, through the doc's executor.
    cfgs = [make_cfg("ce", data="stripes", arch="tiny_cnn", seed=s, batch_size=None, epochs=None) for s in (0, 1)]
    assert cfgs[0].epochs == 2 and cfgs[0].batch_size == 16  # the dataset's defaults
    said = []

    class Console:
        def print(self, text):
            said.append(str(text))

    assert executors.dispatch([SweepRun(c, {"seed": c.seed}) for c in cfgs], Console(), executor="reverse") == 0
    assert [line.split()[:2] for line in said[-2:]] == [["done", cfgs[1].run_id()], ["done", cfgs[0].run_id()]]
    runs, left_out = tables.load_runs([tmp_path / "results"])
    assert left_out == [] and sorted(r["seed"] for r in runs) == [0, 1]
    assert {r["dataset"] for r in runs} == {"stripes"} and {r["arch"] for r in runs} == {"tiny_cnn"}
    assert all(r["final"]["top1"] > 1 / 3 for r in runs)  # three learnable orientations: above chance

    table = tables.build_table(runs, "seeds", names=tables.Names())
    (row,) = table.rows
    assert row.cells[0].n == 2 and row.cells[0].mean == pytest.approx(sum(r["final"]["top1"] for r in runs) / 2)
    assert "CE" in tables.render(table, "markdown")
    with pytest.raises(UserError, match="seeds table has a fixed shape"):
        tables.build_table(runs, "seeds", rows="method")

    fig = plots.build_figure(runs, "epochs")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert ax.get_title() == "stripes" and len(ax.collections) == 1
    assert plots.figure_title("epochs") == "Final accuracy against training epochs"
    with pytest.raises(UserError, match="--data-opt"):
        make_cfg("ce", data="stripes", arch="tiny_cnn", data_options={"colour": "red"})


def test_every_extension_point_takes_entry_points(doc_modules, tmp_path):
    """Out of tree, the same examples come from an installed package's entry points (kebench.<section>)."""
    from kebench import data
    from kebench.analysis import plots
    from kebench.analysis.tables import kinds
    from kebench.grid import EXECUTORS
    from kebench.nets.models import NETWORKS

    dist = tmp_path / "my_kebench-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-kebench\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[kebench.{section}]\n" + "".join(f"{k} = {v}\n" for k, v in entries[section].items())
        for section, (_, _, entries) in doc_modules.items()))
    registry.reload()
    points = {"datasets": data.DATASET_POINT, "networks": NETWORKS, "tables": kinds.TABLES, "figures": plots.FIGURES,
              "executors": EXECUTORS}
    for section, (module, _, entries) in doc_modules.items():
        (name,) = entries[section]
        point = points[section]
        assert point.group == f"kebench.{section}" and name in point.names()
        loaded = point.get(name)
        if section == "datasets":
            assert isinstance(loaded, data.DatasetSpec) and loaded.name == name
        else:
            assert loaded.__module__ == module


def test_a_broken_entry_names_itself(tmp_path, monkeypatch):
    bad = tmp_path / "registry.yaml"
    bad.write_text(_with_entries(registry.registry_path().read_text(), {"figures": {"oops": "no_such_module:fig"}}))
    monkeypatch.setattr(registry, "registry_path", lambda: bad)
    registry.reload()
    try:
        from kebench.analysis import plots

        with pytest.raises(UserError, match=r"Figure kind 'oops' points at 'no_such_module:fig', which cannot be "
                                            r"imported.*registry.yaml's `figures:` entry"):
            plots.build_figure([{"dataset": "x"}], "oops")
        with pytest.raises(UserError, match="Unknown figure kind 'serach'. Did you mean: search"):
            plots.build_figure([{"dataset": "x"}], "serach")
    finally:
        registry.reload()


def test_a_dataset_entry_must_be_a_dataset_spec(tmp_path, monkeypatch):
    (tmp_path / "not_data.py").write_text("STRIPES = 'three stripes'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = tmp_path / "registry.yaml"
    bad.write_text(_with_entries(registry.registry_path().read_text(), {"datasets": {"stripes": "not_data:STRIPES"}}))
    monkeypatch.setattr(registry, "registry_path", lambda: bad)
    registry.reload()
    try:
        from kebench import data

        with pytest.raises(UserError, match="Dataset 'stripes' must name a kebench.data.DatasetSpec"):
            data.get_spec("stripes")
    finally:
        sys.modules.pop("not_data", None)
        registry.reload()
