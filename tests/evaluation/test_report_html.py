"""Seed groups, the paper-shape tables, the figures and report.html, on hand-written run folders with known numbers:
2 methods × {RanLI, RoLI} × 3 seeds on one backbone, a head-init variant, and one run of another backbone."""

from __future__ import annotations

import csv
import json
import statistics
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

from roli.evaluation.groups import groups
from roli.evaluation.report import aggregate, collect, write_report

EPS8, EPS4 = 8 / 255, 4 / 255
N = 200
SEEDS = (0, 1, 2)
CLEAN = {("full_finetune", "ranli"): 70.0, ("full_finetune", "roli"): 80.0, ("lora", "ranli"): 60.0,
         ("lora", "roli"): 75.0}
PGD = {("full_finetune", "ranli"): 40.0, ("full_finetune", "roli"): 50.0, ("lora", "ranli"): 30.0,
       ("lora", "roli"): 45.0}
CLEAN_OFF, PGD_OFF, AA_OFF = (0.0, 1.25, -0.5), (0.0, -0.75, 1.0), (0.0, 0.5, 0.25)


def _results(run_dir: Path, *, method: str, init: str, seed: int, clean: float, pgd: float,
             backbone: str = "vit_a", classes: list | None = None, head_init: str = "torch") -> dict:
    """A minimal complete results.json (the fields the report reads), its history ending at the selected epoch."""
    run_dir.mkdir(parents=True)
    cfg = {"backbone": {"name": backbone}, "data": {"name": "synthetic", "classes": classes},
           "threat": {"norm": "linf", "eps": EPS8}, "attack": {"name": "pgd", "steps": 7, "step_size": 2 / 255},
           "transfer": {"name": method, "init": init, "head_init": head_init}, "train": {"adversarial": True},
           "run": {"seed": seed, "name": run_dir.name}}
    epoch = 1 + seed
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_clean": clean - 1 - (epoch - e),
                "val_robust": pgd - 1 - 2 * (epoch - e)} for e in range(1, 4)]
    res = {"status": "complete", "config": cfg, "method": method, "init": init, "seed": seed, "history": history,
           "selected_epoch": epoch, "best_val": {"clean": clean - 1, "robust": pgd - 1}, "seconds": 10.0 + seed,
           "precision": {"eval": {"used": "fp32"}},
           "test": {"clean": clean, "pgd": pgd, "n": N, "attack": {"name": "pgd", "steps": 10, "step_size": 1 / 255},
                    "threat": {"norm": "linf", "eps": EPS8}}}
    (run_dir / "results.json").write_text(json.dumps(res))
    return res


def _aa(run_dir: Path, acc: float, *, eps: float = EPS8, checks: tuple = ()) -> None:
    """An AutoAttack `roli eval` JSON on the test split at `eps`."""
    aa = {"name": "autoattack", "version": "standard", "attacks": ["apgd-ce", "apgd-t"], "norm": "linf", "eps": eps}
    ev = {"started": "2024-01-01T00:00:00+00:00", "suite": "full", "data": {"name": "synthetic", "split": "test"},
          "threat": {"norm": "linf", "eps": eps}, "attacks": {"autoattack": aa},
          "results": {"clean": {"acc": 0.0, "n": N}, "autoattack": {"acc": acc, "n": N, "seconds": 5.0}},
          "checks": [{"name": name, "passed": ok, "message": f"{name} says {ok}"} for name, ok in checks]}
    (run_dir / f"eval-synthetic-test-full-{round(eps * 255)}.json").write_text(json.dumps(ev))


@pytest.fixture
def study(tmp_path):
    """The run folders and the numbers written: {(method, init): {"clean": [...], "pgd": [...], "aa": [...]}}."""
    root, dirs, known = tmp_path / "runs", [], {}
    for (method, init), clean in CLEAN.items():
        k = known[method, init] = {"clean": [], "pgd": [], "aa": [], "val_robust": [], "seconds": []}
        for s in SEEDS:
            d = root / f"{method}-{init}-s{s}"
            c, p = clean + CLEAN_OFF[s], PGD[method, init] + PGD_OFF[s]
            res = _results(d, method=method, init=init, seed=s, clean=c, pgd=p)
            k["clean"].append(c), k["pgd"].append(p), k["val_robust"].append(res["best_val"]["robust"])
            k["seconds"].append(res["seconds"])
            if method == "full_finetune" and init == "ranli":  # AutoAttack on every seed, checks that pass
                k["aa"].append(p - 3 + AA_OFF[s])
                _aa(d, k["aa"][-1], checks=[("finite", True)])
            elif method == "full_finetune" and s < 2:  # RoLI: AutoAttack on two seeds ...
                k["aa"].append(p - 2 + AA_OFF[s])
                _aa(d, k["aa"][-1], checks=[("finite", True), ("gradients", s == 0)])
            elif method == "full_finetune":  # ... and on the third only at another eps: ignored
                _aa(d, 99.0, eps=EPS4, checks=[("finite", False)])
            dirs.append(d)
    variant = root / "full_finetune-ranli-paper-s0"
    _results(variant, method="full_finetune", init="ranli", seed=0, clean=71.0, pgd=41.0, head_init="paper")
    other = root / "b-full_finetune-ranli-s0"
    _results(other, method="full_finetune", init="ranli", seed=0, clean=55.0, pgd=22.0, backbone="vit_b",
             classes=[3, 4])
    return [*dirs, variant, other], known


def _by_label(gs: list[dict]) -> dict[str, dict]:
    return {g["label"]: g for g in gs}


def test_groups_mean_std_and_per_seed_values(study):
    dirs, known = study
    gs = _by_label(groups(collect(dirs)))
    assert list(gs) == ["full_finetune-ranli", "full_finetune-roli", "lora-ranli", "lora-roli",
                        "full_finetune-ranli-paper", "b-full_finetune-ranli"]
    for (method, init), k in known.items():
        g = gs[f"{method}-{init}"]
        assert (g["n"], g["seeds"], g["method"], g["init"], g["variant"]) == (3, [0, 1, 2], method, init, "")
        for metric, values in (("test_clean", k["clean"]), ("test_pgd", k["pgd"]), ("val_robust", k["val_robust"]),
                               ("seconds", k["seconds"])):
            assert g["stats"][metric] == {"mean": statistics.fmean(values), "std": statistics.stdev(values), "n": 3}
        assert g["stats"]["selected_epoch"] == {"mean": 2.0, "std": 1.0, "n": 3}
        aa = k["aa"]
        assert g["stats"]["test_aa"] == ({"mean": statistics.fmean(aa), "std": statistics.stdev(aa), "n": len(aa)}
                                         if aa else {"mean": None, "std": None, "n": 0})
        assert [(s["seed"], s["clean"], s["pgd"]) for s in g["per_seed"]] == list(zip(SEEDS, k["clean"], k["pgd"]))
    # the 4/255 AutoAttack of full_finetune-roli-s2 is not its number: None, and the group's AA is over 2 seeds
    assert [s["aa"] for s in gs["full_finetune-roli"]["per_seed"]] == [*known["full_finetune", "roli"]["aa"], None]
    assert gs["full_finetune-roli"]["per_seed"][2]["run_dir"] == str(dirs[5])
    single = gs["b-full_finetune-ranli"]
    assert (single["n"], single["data"], single["backbone"]) == (1, "synthetic[3,4]", "vit_b")
    assert single["stats"]["test_clean"] == {"mean": 55.0, "std": None, "n": 1}
    assert gs["full_finetune-ranli-paper"]["variant"] == "head_init=paper"
    assert aggregate(dirs)["groups"] == groups(collect(dirs))


def _md_tables(text: str) -> dict[str, list[list[str]]]:
    """report.md's paper tables by backbone (### headings), as rows of cells."""
    tables, name = {}, None
    for line in text.split("\n## Figures")[0].splitlines():
        if line.startswith("### "):
            name = line[4:]
            tables[name] = []
        elif line.startswith("| ") and name:
            tables[name].append([c.strip() for c in line.strip("|").split("|")])
    return tables


def _cell(values: list[float], n_seeds: int = 3) -> str:
    text = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
    return text + (f" (n={len(values)})" if len(values) != n_seeds else "")


def test_markdown_paper_tables_csv_and_json(study, tmp_path):
    dirs, known = study
    text = write_report(tmp_path, dirs).read_text()
    tables = _md_tables(text)
    assert list(tables) == ["vit_a", "vit_b"]
    head, *rows = tables["vit_a"]
    assert head == ["method", *(f"synthetic {i} {m}" for i in ("RanLI", "RoLI") for m in ("clean", "PGD", "AA", "n"))]
    cells = {r[0]: dict(zip(head, r)) for r in rows}
    assert list(cells) == ["full_finetune", "full_finetune (head_init=paper)", "lora"]  # a variant after its method
    for (method, init), k in known.items():
        row, col = cells[method], f"synthetic {'RanLI' if init == 'ranli' else 'RoLI'}"
        assert row[f"{col} clean"] == _cell(k["clean"]) and row[f"{col} PGD"] == _cell(k["pgd"])
        assert row[f"{col} AA"] == (_cell(k["aa"]) if k["aa"] else "–") and row[f"{col} n"] == "3"
    assert cells["full_finetune"]["synthetic RoLI AA"].endswith("(n=2)")
    assert [cells["full_finetune (head_init=paper)"][c] for c in head[1:]] == ["71.00", "41.00", "–", "1"] + ["–"] * 4
    first = _md_tables(write_report(tmp_path / "variant_first", [dirs[-2], *dirs[:-2], dirs[-1]]).read_text())
    assert [r[0] for r in first["vit_a"][1:]] == list(cells) and list(first) == ["vit_a", "vit_b"]
    # vit_b has one RanLI run and no AutoAttack: no RoLI and no AA columns
    assert tables["vit_b"] == [["method", "synthetic[3,4] RanLI clean", "synthetic[3,4] RanLI PGD",
                                "synthetic[3,4] RanLI n"], ["full_finetune", "55.00", "22.00", "1"]]
    settings = text.split("\n")[2]
    assert settings == ("Settings: threat linf eps 8/255 · training attack PGD-7 (step 2/255) · evaluation attack "
                        "PGD-10 (step 1/255) · eval precision fp32 · test images 200 · AutoAttack standard (apgd-ce, "
                        "apgd-t) on 200 images")

    # sanity: one line per group, failures by run, the 4/255 eval's failure not shown
    checks = text.split("## Sanity checks")[1].split("## Runs")[0].strip().splitlines()
    assert checks == [
        "- full_finetune-ranli: all 6 checks passed over 3 runs",
        "- **full_finetune-roli-s1: gradients FAILED (eval-synthetic-test-full-8.json): gradients says False**",
        "- full_finetune-roli: 5 checks passed, 1 failed over 2 runs; no checks yet for full_finetune-roli-s2",
        "- lora-ranli: no checks yet (run `roli eval --checkpoint lora-ranli-s0/best.pt --suite full` for each of its "
        + "3 runs)",
        "- lora-roli: no checks yet (run `roli eval --checkpoint lora-roli-s0/best.pt --suite full` for each of its "
        + "3 runs)",
        "- full_finetune-ranli-paper: no checks yet (run `roli eval --checkpoint full_finetune-ranli-paper-s0/best.pt "
        + "--suite full`)",
        "- b-full_finetune-ranli: no checks yet (run `roli eval --checkpoint b-full_finetune-ranli-s0/best.pt "
        + "--suite full`)"]

    with open(tmp_path / "report_groups.csv", newline="") as f:
        by_label = {r["label"]: r for r in csv.DictReader(f)}
    row, k = by_label["full_finetune-roli"], known["full_finetune", "roli"]
    assert (row["n"], row["seeds"], row["test_aa_n"]) == ("3", "0;1;2", "2")
    assert float(row["test_pgd_mean"]) == statistics.fmean(k["pgd"])
    assert float(row["test_pgd_std"]) == statistics.stdev(k["pgd"])
    assert by_label["b-full_finetune-ranli"]["test_clean_std"] == ""
    with open(tmp_path / "report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(dirs)  # still one row per run

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["threat"] == "linf eps 8/255"
    assert [g["label"] for g in report["groups"]] == list(_by_label(groups(collect(dirs))))
    g = _by_label(report["groups"])["lora-roli"]
    assert [s["clean"] for s in g["per_seed"]] == known["lora", "roli"]["clean"]
    assert [s["aa"] for s in g["per_seed"]] == [None] * 3
    assert len(report["runs"]) == len(dirs) and "history" not in report["runs"][0]


def test_no_aa_columns_from_another_eps(tmp_path):
    dirs = []
    for init in ("ranli", "roli"):
        for s in (0, 1):
            d = tmp_path / "runs" / f"ff-{init}-s{s}"
            _results(d, method="full_finetune", init=init, seed=s, clean=70.0 + s, pgd=40.0 + s)
            _aa(d, 30.0, eps=EPS4)
            dirs.append(d)
    text = write_report(tmp_path / "out", dirs).read_text()
    head = _md_tables(text)["vit_a"][0]
    assert head == ["method", "synthetic RanLI clean", "synthetic RanLI PGD", "synthetic RanLI n",
                    "synthetic RoLI clean", "synthetic RoLI PGD", "synthetic RoLI n"]
    assert "30.00" not in text and "AutoAttack standard" not in text
    parsed = _parse((tmp_path / "out" / "report.html").read_text())
    assert all("AA" not in cell for t in parsed.tables for row in t for _, cell in row)


class _Html(HTMLParser):
    """Tag counts and every table as rows of (tag, text) cells."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: dict[str, int] = {}
        self.ends: dict[str, int] = {}
        self.tables: list[list[list[tuple[str, str]]]] = []
        self.h2: list[str] = []
        self._cell: list[str] | None = None
        self._tag = ""

    def handle_starttag(self, tag, attrs):
        self.starts[tag] = self.starts.get(tag, 0) + 1
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th", "h2"):
            self._cell, self._tag = [], tag

    def handle_endtag(self, tag):
        self.ends[tag] = self.ends.get(tag, 0) + 1
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append((tag, "".join(self._cell)))
            self._cell = None
        elif tag == "h2" and self._cell is not None:
            self.h2.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Html:
    p = _Html()
    p.feed(text)
    p.close()
    return p


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_html_page_tables_and_figures(study, tmp_path):
    dirs, known = study
    write_report(tmp_path, dirs)
    text = (tmp_path / "report.html").read_text()
    assert text.startswith("<!doctype html>") and "<pre>" not in text and "<style>" in text
    p = _parse(text)
    for tag in ("html", "table", "thead", "tbody", "tr", "td", "th", "section", "details"):
        assert p.starts.get(tag, 0) == p.ends.get(tag, 0) > 0, tag
    assert p.h2 == ["Settings", "Results", "Clean vs robust accuracy", "Validation curves",
                    "AutoAttack and sanity checks", "Runs"]  # no eps section: no sweep
    assert text.count("data:image/png;base64,") == 2

    paper, runs = p.tables[0], p.tables[-1]
    assert len(p.tables) == 3  # vit_a, vit_b, runs
    header = [cell for row in paper[:3] for _, cell in row]
    assert header[:4] == ["method", "synthetic", "RanLI", "RoLI"]
    tds = [cell for row in paper for tag, cell in row if tag == "td"]
    k = known["full_finetune", "roli"]
    assert _cell(k["pgd"]) in tds and _cell(k["aa"]) in tds
    assert [c for _, c in paper[3]][:5] == ["full_finetune", *(_cell(known["full_finetune", "ranli"][m])
                                                                for m in ("clean", "pgd", "aa")), "3"]
    for table in p.tables:
        for row in table:
            cells = [c for tag, c in row if tag == "td"]
            assert not cells or any(c not in ("–", "") for c in cells), row  # never a placeholder-only row
    assert len(runs) == 1 + len(dirs)
    # the escaped sanity lines: once per group, the failure named
    assert text.count("full_finetune-roli: 5 checks passed, 1 failed over 2 runs") == 1
    assert '<li class=fail>full_finetune-roli-s1: gradients FAILED' in text

    # figures: one scatter panel per (backbone, dataset), so two panels are wider than the single one
    scatter, curves = _png_size(tmp_path / "report_scatter.png"), _png_size(tmp_path / "report_val_curves.png")
    one = tmp_path / "one"
    write_report(one, dirs[:6])
    single = _png_size(one / "report_scatter.png")
    assert scatter[0] > 1.5 * single[0] and scatter[1] == pytest.approx(single[1], abs=40)
    assert curves[0] > 1.5 * _png_size(one / "report_val_curves.png")[0]
    assert not (tmp_path / "report_eps.png").exists()


def test_scatter_uses_autoattack_only_when_every_group_has_it(study, tmp_path):
    dirs, _ = study
    text = write_report(tmp_path / "all", dirs).read_text()  # lora has no AutoAttack: PGD for every group
    assert "![test clean vs PGD-10 accuracy per group" in text and "clean vs AutoAttack" not in text
    text = write_report(tmp_path / "aa", dirs[:3]).read_text()  # full_finetune RanLI only: every seed has one
    assert "![test clean vs AutoAttack accuracy per group" in text
