"""kebench study: shipped studies load and expand; `study run` trains a grid and writes one
self-contained HTML report (checked by parsing, no browser) with LaTeX/Markdown tables beside it;
`study report` re-renders partial results with the missing cells and runs marked."""
from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from kebench.analysis import study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHIPPED = ("ke-table2", "ke-densenet169", "ke-retrieval", "ke-ablations", "park-kd-pruning",
           "park-kd-augmentation", "evolution", "park-analyses")
TINY = """
title: "Tiny study"
paper: "a test"
about: "CE once and under KE, with the matched single pass."
scales:
  mini:
    note: "synthetic data and 5% of digits, test_resnet, 1 epoch per pass, 2 seeds"
    grid:
      - {method: [ce, ke], seed: [0, 1], data: [synthetic]}
      - {method: [ce, ke], seed: [0, 1], data: [digits], train_fraction: [0.05], resolution: [16]}
    set: {arch: test_resnet, epochs: 1, batch_size: 16, generations: 2, budget: matched,
          checkpoint_every_s: 0, device: cpu}
tables:
  - {kind: classification, title: "Top-1", generation: "1,2", match_set: [epochs]}
  - {kind: budget, title: "Matched budget"}
  - {kind: cost, title: "Dense vs slim", methods: [ke]}
figures: [generations, budget, cost, hypotheses]
"""


class Page(HTMLParser):
    """Collects what the structure test checks: tags, table cells, image sources, links, text."""

    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.urls, self.cells, self.text = [], [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for k in ("href", "src"):
            if a.get(k) and not a[k].startswith(("data:", "#")):
                self.urls.append(a[k])
        if tag == "td":
            self._cell = {"class": a.get("class", ""), "text": ""}

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def test_every_shipped_study_loads_and_expands(tmp_path):
    assert set(SHIPPED) <= set(study.names())
    for name in SHIPPED:
        s = study.load(name)
        assert {"mini", "paper"} <= set(s.scales) <= set(study.SCALES) and s.paper and s.tables
        for scale in s.scales:
            entries = study.entries(s, scale, out=tmp_path)
            assert len({e.run_id for e in entries}) == len(entries) >= (6 if scale != "standin" else 3), (name, scale)
        mini = {e.cfg.data for e in study.entries(s, "mini", out=tmp_path)}
        assert mini <= {"digits", "digits-retrieval"}, name  # embedded data: runs anywhere
    seeds = {e.cfg.seed for e in study.entries(study.load("ke-table2"), "mini", out=tmp_path)}
    assert seeds == {0, 1, 2}


def test_study_list_and_unknown_name(cli_run):
    code, out, _ = cli_run(["study", "list"])
    assert code == 0 and all(n in out for n in SHIPPED)
    code, _, err = cli_run(["study", "run", "ke-tabel2"])
    assert code == 2 and "Unknown study 'ke-tabel2'" in err and "ke-table2" in err


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """Run the tiny study once (inline, ~10 s on CPU) and return (results dir, report dir)."""
    from kebench.cli import main

    root = tmp_path_factory.mktemp("study")
    spec = root / "tiny.yaml"
    spec.write_text(TINY)
    out = root / "results"
    with pytest.raises(SystemExit) as exc:
        main(["study", "run", str(spec), "--out", str(out)])
    assert exc.value.code == 0
    return spec, out, out / "report"


def test_study_run_writes_a_self_contained_report(tiny_report):
    spec, out, report = tiny_report
    runs = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    assert len(runs) == 12  # ce, ke x 2 seeds x 2 datasets + the matched 2-epoch single pass of each ke run
    page = parse(report / "report.html")
    assert page.tags.count("html") == 1 and page.urls == []  # nothing fetched from anywhere
    text = " ".join(page.text)
    for title in ("Table 1: Top-1", "Table 2: Matched budget", "Table 3: Dense vs slim", "Summary",
                  "Missing runs (0)", "Runs and provenance (12)"):
        assert title in text
    # generations, budget, hypotheses; the cost figure is left out, with the reason: every panel's
    # networks cost one of two amounts (test_resnet dense and its slim part)
    assert len(page.imgs) == 3 and "cost: left out: the networks evaluated cost one or two amounts" in text
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not [c for c in page.cells if "missing" in c["class"]]  # every cell filled
    # one summary line per table, naming a winner and the significance
    summaries = re.findall(r'<p class="summary">(.*?)</p>', (report / "report.html").read_text())
    assert len(summaries) == 3
    assert "best" in summaries[0] and ("significant" in summaries[0] or "not tested" in summaries[0])
    assert "At equal total epochs" in summaries[1] and "slim" in summaries[2]
    # provenance of every run: id, config hash, versions, commit column, device, wall time
    for r in runs:
        assert r["run_id"] in text and r["run_id"].rpartition("_")[2] in text
    assert "torch " in text and "cpu" in text
    # the precision each run used (its result.json provenance) and its initialisation
    assert all(r["provenance"]["precision"] == "fp32" for r in runs)
    assert "precision" in page.text and "init" in page.text and text.count(" fp32 ") >= len(runs)
    tex = (report / "tables.tex").read_text()
    # three tables; one too wide for a two-column page is split in two parts (issue 24.8)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\label{tab:kebench-") >= 3
    md = (report / "report.md").read_text()
    assert md.count("| Method |") >= 2 and "**Summary:**" in md
    assert sorted(p.name for p in (report / "figures").iterdir()) == ["budget.png", "generations.png", "hypotheses.png"]
    assert "_cost figure: left out:" in md
    assert "Runs: 8 expected; 8 done; plus 4 matched-budget baseline run(s) they trained." in md


def test_study_report_marks_missing_runs_and_cells(tiny_report, tmp_path, cli_run):
    spec, out, _ = tiny_report
    partial = tmp_path / "partial"
    shutil.copytree(out, partial, ignore=shutil.ignore_patterns("report"))
    gone = sorted(p.parent for p in partial.glob("ce+ke_*_digits_*/result.json"))
    assert len(gone) == 2
    for run_dir in gone:
        (run_dir / "result.json").unlink()  # still "running": no result yet
    code, _, err = cli_run(["study", "report", str(spec), "--out", str(partial)])
    assert code == 0 and "report.html" in err
    page = parse(partial / "report" / "report.html")
    text = " ".join(page.text)
    assert "Missing runs (2)" in text and all(d.name in text for d in gone)
    assert "2 run(s) of this study have not finished" in text
    missing = [c for c in page.cells if "missing" in c["class"]]
    assert missing and all(c["text"] == "–" for c in missing)  # KE rows: no digits cell yet
    assert "incomplete: no result.json" in text


def _cell(values, **kw):
    from kebench.analysis import tables as T

    c = T.make_cell(values)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_summaries_name_the_winner_the_margin_and_the_test():
    from kebench.analysis import report
    from kebench.analysis import tables as T

    cols = [T.Col(("digits",), "top1")]
    n1 = T.Row(("CE (N1)", "–"), [_cell({0: .70, 1: .72})])
    ke = T.Row(("CE + KE-N3", "0.5"), [_cell({0: .80, 1: .82}, mark="*", test="paired-t", p=0.012)])
    line = report.summarize_grid(T.Table("classification", "", ("Method", "split_rate"), cols, [n1, ke]))
    assert line.startswith("digits: best CE + KE-N3 / 0.5 (81.00 ± 1.41 %), +10.00 points over CE (N1)")
    assert "significant (paired-t, p = 0.012)" in line and "1 of 1 higher (1 significantly)" in line
    worse = T.Row(("CE + KE-N3", "0.5"), [_cell({0: .60, 1: .66}, test="paired-t", p=0.2)])
    line = report.summarize_grid(T.Table("classification", "", ("Method", "split_rate"), cols, [n1, worse]))
    assert "best CE (N1)" in line and "no multi-pass regime beat it" in line and "0 of 1 higher" in line
    # budget: multi row, matched single row, per-seed difference
    multi, single = T.Row(("CE + KE-N3",), [_cell({0: .80, 1: .81})]), T.Row(("CE (N1, 24 ep)",), [_cell({0: .84, 1: .86})])
    delta = T.Row(("Δ (multi − single)",), [_cell({0: -.04, 1: -.05}, mark="*", test="one-sample-t", p=0.03)])
    line = report.summarize_budget(T.Table("budget", "", ("Method",), cols, [multi, single, delta]))
    assert line.startswith("At equal total epochs the multi-pass regime wins 0 of 1 comparisons (0 significantly) "
                           "and the single pass wins 1 (1 significantly).")
    assert "Largest loss: CE + KE-N3 vs CE (N1, 24 ep), Δ -4.50 points, significant (one-sample-t, p = 0.03)" in line


def test_significance_reports_the_adjusted_p_the_mark_rests_on():
    from kebench.analysis import report

    marked = _cell({0: .1, 1: .2, 2: .3}, mark="*", test="paired-t", p=0.004, q=0.012)
    unmarked = _cell({0: .1, 1: .2, 2: .3}, test="paired-t", p=0.03, q=0.09)
    assert report.significance(marked) == "significant (paired-t, BH-adjusted p = 0.012)"
    assert report.significance(unmarked) == "not significant (paired-t, BH-adjusted p = 0.09)"
    assert report.significance(_cell({0: .1})) == "not tested (fewer than 2 seeds)"


def test_every_figure_kind_has_a_report_title():
    """Figure kinds are one extension point (kebench's own, then registry.yaml's `figures:`): each one
    a study may name has the title its report section shows."""
    from kebench.analysis import plots

    assert plots.figure_names() == ["generations", "cost", "hypotheses", "budget", "landscape", "search"]
    assert plots.figure_title("search").startswith("Architecture search: the best individual")
    assert all(plots.figure_title(k) for k in plots.figure_names())


def test_paper_scales_train_on_the_papers_own_data_and_networks(tmp_path):
    """Park et al.'s studies on CIFAR with their networks and recipe; the evolution study on MNIST,
    CIFAR and (neuroevolution) ImageNet."""
    pruning = study.entries(study.load("park-kd-pruning"), "paper", out=tmp_path)
    assert {e.cfg.data for e in pruning} == {"cifar100", "cifar10"}
    assert {e.cfg.arch for e in pruning} == {"resnet56", "resnet110", "vgg19_cifar", "densenet40"}
    assert len(pruning) == 9 * 3 * 4 * 2 * 3
    cfg = pruning[0].cfg
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.weight_decay, cfg.lr_schedule, cfg.lr_milestones) == \
        (0.1, 64, 160, 1e-4, "step", [0.5, 0.75])
    assert {e.cfg.params[e.cfg.method_spec.regime.name]["prune"] for e in pruning} == {"l1-filter", "slimming", "weight"}
    aug = study.entries(study.load("park-kd-augmentation"), "paper", out=tmp_path)
    assert {e.cfg.data for e in aug} == {"cifar100"} and len(aug) == (3 + 9) * 3 * 3
    assert {e.cfg.arch for e in aug} == {"resnet56", "wrn28_10", "pyramidnet110_a48"}
    evo = study.entries(study.load("evolution"), "paper", out=tmp_path)
    by_data = {}
    for e in evo:
        by_data.setdefault(e.cfg.data, set()).add(e.cfg.method_spec.regime.name)
    assert set(by_data) == {"mnist", "cifar10", "cifar100", "imagenet"}
    assert by_data["imagenet"] == {"neuroevo"} and "ke" in by_data["cifar100"] and "binarize" in by_data["mnist"]
    assert {e.cfg.epochs for e in evo if e.cfg.data == "imagenet"} == {90}


def test_park_analyses_grids_are_three_students_over_five_seeds_with_both_analyses(tmp_path):
    """Park et al. Tables 6 and 7: scratch, KD and pruned Self-Distill students, 5 seeds, NASWOT and
    per-LR-step landscapes; paper scale on CIFAR-100 with Park's networks and the step schedule."""
    s = study.load("park-analyses")
    assert [t["kind"] for t in s.tables] == ["interval", "interval"] and s.tables[0]["metric"] == "naswot"
    assert s.figures == ["landscape"]
    for scale, archs in (("paper", {"resnet56", "resnet110", "vgg19_cifar", "densenet40"}), ("mini", {"test_resnet"})):
        entries = study.entries(s, scale, out=tmp_path)
        assert len(entries) == 3 * len(archs) * 5, scale  # paper 60, mini 15
        assert {e.cfg.arch for e in entries} == archs and {e.cfg.seed for e in entries} == {0, 1, 2, 3, 4}
        students = {(e.cfg.method, e.cfg.params[e.cfg.method_spec.regime.name]["prune"]) for e in entries}
        assert students == {("ce+scratch", "none"), ("kd+pre-distill", "none"), ("kd+self-distill", "l1-filter")}
        assert all(e.cfg.analyses == ["naswot", "landscape"] and e.cfg.lr_schedule == "step" for e in entries)
    paper = study.entries(s, "paper", out=tmp_path)
    assert {e.cfg.data for e in paper} == {"cifar100"} and {e.cfg.epochs for e in paper} == {160}


def test_evolution_standin_runs_the_imagenet_neuroevolution_row_on_tiny_imagenet(tmp_path, cli_run):
    """Issue 26: Tiny-ImageNet as a documented smaller stand-in for the neuroevolution-on-ImageNet row:
    the same regime and budget, Tiny-ImageNet at its own 64 px, a ResNet-18 with a stride-1 stem."""
    from kebench.data.paper import PAPER
    from kebench.nets.models import create_model
    from methods.neuroevo import check_family

    evo = study.load("evolution")
    paper = [e for e in study.entries(evo, "paper", out=tmp_path) if e.cfg.data == "imagenet"]
    standin = study.entries(evo, "standin", out=tmp_path)
    assert len(standin) == len(study.expected_runs(evo, "standin", out=tmp_path)) == 3
    assert {e.cfg.method_spec.regime.name for e in standin} == {e.cfg.method_spec.regime.name for e in paper} == {"neuroevo"}
    assert {e.cfg.seed for e in standin} == {e.cfg.seed for e in paper} == {0, 1, 2}
    assert {(e.cfg.data, e.cfg.arch, e.cfg.resolution) for e in standin} == {("tiny-imagenet", "resnet18_tiny", None)}
    assert PAPER["tiny-imagenet"].native == 64  # resolution None: the dataset's own 64 px
    cfg = standin[0].cfg
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.weight_decay, cfg.lr_schedule, cfg.lr_milestones, cfg.budget) == \
        (0.1, 128, 100, 5e-4, "step", [0.5, 0.75], "matched")  # Tiny-ImageNet's dataset defaults, the paper's budget
    assert paper[0].cfg.budget == "matched"
    assert "not a reproduction" in evo.note("standin") and "standin" in evo.note("paper")
    # the network: a timm ResNet neuroevo can grow, stages at 64/32/16/8 px on 64 px images
    model = create_model("resnet18_tiny", 200)
    check_family(model, "resnet18_tiny")
    assert model.forward_features(torch.zeros(2, 3, 64, 64)).shape == (2, 512, 8, 8)
    assert sum(p.numel() for p in model.parameters()) == 11271432
    code, out, err = cli_run(["study", "run", "evolution", "--scale", "standin", "--status", "--out", str(tmp_path)])
    assert code == 0 and out.count("pending") >= 3, out + err


def test_empty_cells_are_missing_only_while_runs_are_unfinished_and_text_does_not_leak():
    """Issue 24.3: once every run is done, an empty cell is by design (grey, 'not part of this study's
    grid'), not a red missing result; backticks and Acc_1 become <code> and a subscript."""
    from kebench.analysis import report
    from kebench.analysis import tables as T

    table = T.Table("cost", "", ("Method",), [T.Col(("Acc_1",), "acc_1"), T.Col(("digits",), "top1")],
                    [T.Row(("CE",), [_cell({0: .7}), T.Cell()])], notes=["see `kebench run --budget matched`"])
    pending, done = report.table_html(table, awaited=True), report.table_html(table, awaited=False)
    assert pending.count('class="missing"') == 1 and 'class="empty"' not in pending
    assert done.count('class="empty" title="not part of this study\'s grid"') == 1 and 'class="missing"' not in done
    assert "Acc<sub>1</sub>" in done and "Acc_1" not in done
    assert "<code>kebench run --budget matched</code>" in done and "`" not in done
