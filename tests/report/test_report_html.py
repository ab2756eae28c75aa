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

from roli.report.collect import collect
from roli.report.groups import groups
from roli.report.write import aggregate, write_report

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
         "3 runs)",
        "- lora-roli: no checks yet (run `roli eval --checkpoint lora-roli-s0/best.pt --suite full` for each of its "
         "3 runs)",
        "- full_finetune-ranli-paper: no checks yet (run `roli eval --checkpoint full_finetune-ranli-paper-s0/best.pt "
         "--suite full`)",
        "- b-full_finetune-ranli: no checks yet (run `roli eval --checkpoint b-full_finetune-ranli-s0/best.pt "
         "--suite full`)"]

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
    (_, wall), = parsed.tables_under("Wall time")
    assert [row[5] for row in wall] == ["AA s per run", "–", "–", "–"]  # the 4/255 AutoAttack's time is not counted
    assert all("AA" not in cell for h, t in zip(parsed.table_heads, parsed.tables) if h[0] != "Wall time"
               for row in t for _, cell in row)


class _Html(HTMLParser):
    """Tag counts, every table as rows of (tag, text) cells with the h2 and h3/h4 heading it stands under, and the
    text of headings, paragraphs, list items and inline marks in document order as (tag, text, h2)."""

    CAPTURE = ("title", "h1", "h2", "h3", "h4", "p", "li", "strong", "em", "code")

    def __init__(self) -> None:
        super().__init__()
        self.starts: dict[str, int] = {}
        self.ends: dict[str, int] = {}
        self.tables: list[list[list[tuple[str, str]]]] = []
        self.table_heads: list[tuple[str, str]] = []  # (h2, last h3/h4) of each table
        self.h2: list[str] = []
        self.texts: list[tuple[str, str, str]] = []
        self._cell: list[str] | None = None
        self._open: list[tuple[str, list[str]]] = []
        self._h2 = self._h3 = ""

    def handle_starttag(self, tag, attrs):
        self.starts[tag] = self.starts.get(tag, 0) + 1
        if tag == "table":
            self.tables.append([])
            self.table_heads.append((self._h2, self._h3))
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag in self.CAPTURE:
            self._open.append((tag, []))

    def handle_endtag(self, tag):
        self.ends[tag] = self.ends.get(tag, 0) + 1
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append((tag, "".join(self._cell)))
            self._cell = None
        if tag in self.CAPTURE and self._open and self._open[-1][0] == tag:
            _, buf = self._open.pop()
            text = "".join(buf)
            if tag == "h2":
                self.h2.append(text)
                self._h2, self._h3 = text, ""
            elif tag in ("h3", "h4"):
                self._h3 = text
            self.texts.append((tag, text, self._h2))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        for _, buf in self._open:
            buf.append(data)

    def of(self, tag: str, h2: str | None = None) -> list[str]:
        """The texts of every `tag` element (under the h2 `h2` when given), in order."""
        return [t for g, t, h in self.texts if g == tag and h2 in (None, h)]

    def tables_under(self, h2: str) -> list[tuple[str, list[list[str]]]]:
        """The tables under the h2 `h2`: (their h3/h4 heading, rows of cell texts)."""
        return [(h3, [[c for _, c in row] for row in t]) for (h, h3), t in zip(self.table_heads, self.tables)
                if h == h2]


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
    assert p.h2 == ["Settings", "Results", "Clean vs robust accuracy", "Validation curves", "Wall time",
                    "AutoAttack and sanity checks", "Runs"]  # no eps section: no sweep, no findings without a spec
    assert p.of("title") == p.of("h1") == ["roli report"] and 'id="findings"' not in text
    assert text.count("data:image/png;base64,") == 2

    paper, runs = p.tables[0], p.tables[-1]
    assert len(p.tables) == 4  # vit_a, vit_b, wall time, runs
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


# ------------------------------------------------------------------------------------------------ findings, wall time
# A hand-made study under findings' naming rule (f"{prefix}-{method}-{init}"), 3 seeds a group: robust- and standard-
# backbone groups, RoLI on the robust one, no standard linear probe (finding 1 reports that row as not run) and a
# quirk variant of robust-lora-ranli. Finding 1 holds for lora (35 vs 8 PGD; full finetuning, not PEFT, is
# within the margin), RoLI gains 3-4 points.

FINDING_GROUPS = {  # label: (backbone, method, init, head_init, clean, pgd)
    "robust-linear_probe-ranli": ("vit_robust", "linear_probe", "ranli", "torch", 70.0, 42.0),
    "robust-full_finetune-ranli": ("vit_robust", "full_finetune", "ranli", "torch", 72.0, 40.0),
    "robust-full_finetune-roli": ("vit_robust", "full_finetune", "roli", "torch", 75.0, 43.0),
    "robust-lora-ranli": ("vit_robust", "lora", "ranli", "torch", 65.0, 35.0),
    "robust-lora-roli": ("vit_robust", "lora", "roli", "torch", 69.0, 38.0),
    "standard-full_finetune-ranli": ("vit_std", "full_finetune", "ranli", "torch", 60.0, 36.0),  # < margin
    "standard-lora-ranli": ("vit_std", "lora", "ranli", "torch", 55.0, 8.0),
    "quirk-lora_zero-ranli": ("vit_robust", "lora", "ranli", "paper", 64.0, 34.5),
}
OFFSETS = ((0.0, 1.3, -0.7), (0.4, -0.9, 1.1), (-0.6, 0.2, 0.9), (1.0, -0.3, 0.1), (-0.2, 0.8, 0.3))  # per seed
AA_SEEDS = {"robust-lora-ranli": SEEDS, "standard-lora-ranli": SEEDS, "standard-full_finetune-ranli": (0,)}
FINDINGS_SPEC = {
    "title": "Findings <study> & co",
    "robust": "robust", "standard": "standard", "methods": ["linear_probe", "full_finetune", "lora"],
    "paper": {"roli_gain_clean": 3.88, "roli_gain_pgd": 2.44},
    "compare": [{"name": "LoRA zero <init>", "default": "robust-lora-ranli", "variant": "quirk-lora_zero-ranli"}],
    "intro": "Set-up: <script>alert('x')</script> with `a<b>` and **bold** and *italic* & more.\n\n"
             "- first <i>item</i>\n  continued\n- second item",
    "discussion": {"roli": "Why RoLI wins here: *small* data.", "quirks": "The zero init `B2` matters little."},
    "closing": "## GPU plan\n\nRun the same cells on a GPU with `roli sweep`.",
}
FINDING_HEADINGS = ["Finding 1. Standard vs robust backbone under adversarial PEFT",
                    "Finding 2. Linear probing vs full finetuning (robust backbone)",
                    "Finding 3. RoLI vs RanLI (robust backbone)"]


@pytest.fixture(scope="module")
def findings_report(tmp_path_factory):
    """report.html with and without the findings spec, on the same runs: (out with spec, out without, known numbers
    {label: {"clean", "pgd", "aa", "seconds"}})."""
    root = tmp_path_factory.mktemp("findings")
    dirs, known = [], {}
    for i, (lab, (backbone, method, init, head_init, clean, pgd)) in enumerate(FINDING_GROUPS.items()):
        k = known[lab] = {"clean": [], "pgd": [], "aa": [], "seconds": []}
        for s in SEEDS:
            d = root / "runs" / f"{lab}-s{s}"
            c, p = clean + OFFSETS[i % 5][s], pgd + OFFSETS[(i + 1) % 5][s]
            res = _results(d, method=method, init=init, seed=s, clean=c, pgd=p, backbone=backbone,
                           head_init=head_init)
            k["clean"].append(c), k["pgd"].append(p), k["seconds"].append(res["seconds"])
            if s in AA_SEEDS.get(lab, ()):
                k["aa"].append(p - 2 + OFFSETS[i % 5][s] / 2)
                _aa(d, k["aa"][-1])
            dirs.append(d)
    write_report(root / "with", dirs, spec=FINDINGS_SPEC)
    write_report(root / "without", dirs)
    return root / "with", root / "without", known


def _md_finding_tables(md: str) -> list[tuple[str, list[list[str]]]]:
    """findings.markdown()'s tables as (the heading above, rows of cells)."""
    out, heading, rows = [], "", None
    for line in md.splitlines():
        if line.startswith("#"):
            heading, rows = line.lstrip("#").strip(), None
        elif line.startswith("|"):
            if set(line) <= {"|", "-"}:
                continue
            if rows is None:
                rows = []
                out.append((heading, rows))
            rows.append([c.strip() for c in line.strip("|").split("|")])
        else:
            rows = None
    return out


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:#.3g}"


def test_html_findings_section_matches_findings_json(findings_report):
    from scipy import stats

    from roli.report.markdown import findings_markdown as markdown

    out, _, known = findings_report
    found = json.loads((out / "findings.json").read_text())
    text = (out / "report.html").read_text()
    assert "<pre>" not in text
    p = _parse(text)
    for tag in ("section", "table", "ul", "li", "p", "h3", "h4", "strong", "em", "code"):
        assert p.starts.get(tag, 0) == p.ends.get(tag, 0) > 0, tag
    assert p.of("title") == p.of("h1") == ["Findings <study> & co"]
    assert "<title>Findings &lt;study&gt; &amp; co</title>" in text
    assert p.h2 == ["Settings", "Findings", "Results", "Clean vs robust accuracy", "Validation curves", "Wall time",
                    "GPU plan", "AutoAttack and sanity checks", "Runs"]
    quirks = "Reference quirks vs roli defaults (variant - default, paired by seed)"
    assert p.of("h3", "Findings") == [*FINDING_HEADINGS, quirks]
    assert p.of("h4", "Findings") == ["LoRA zero <init>"]

    # per finding: its statement (italic), rule and verdict sentence (bold), in the markdown's order
    strong, em, paras = p.of("strong", "Findings"), p.of("em", "Findings"), p.of("p", "Findings")
    for key in ("backbone", "linear_vs_full", "roli"):
        f = found[key]
        assert f["status"] not in ("not run", "untested"), key
        assert f["sentence"] in strong and f["finding"] in em and f"Rule: {f['rule']}" in paras, key
    assert [s for s in strong if s != "bold"] == [found[k]["sentence"] for k in ("backbone", "linear_vs_full", "roli")]
    assert found["quirks"][0]["sentence"] in paras
    assert "Significance level alpha = 0.05 (confidence intervals at 95%)." in paras
    assert 'class="verdict ok"' in text  # finding 1 holds here
    order = [paras.index(x) for x in (found["roli"]["sentence"], "Why RoLI wins here: small data.",
                                      found["quirks"][0]["sentence"], "The zero init B2 matters little.")]
    assert order == sorted(order)  # each discussion after its finding

    # every findings table equals the markdown's table, cell for cell, under the same heading
    html_tables = p.tables_under("Findings")
    assert html_tables == _md_finding_tables(markdown(found))
    assert [h for h, _ in html_tables] == [*FINDING_HEADINGS, FINDING_HEADINGS[2], "LoRA zero <init>"]

    # ... and its numbers are findings.json's, which are the runs' (recomputed here)
    backbone = {(r[0], r[2]): r for r in html_tables[0][1][1:]}
    rob, std = known["robust-lora-ranli"]["pgd"], known["standard-lora-ranli"]["pgd"]
    w = found["backbone"]["methods"][2]["metrics"]["pgd"]
    assert w["diff"] == pytest.approx(statistics.fmean(rob) - statistics.fmean(std))
    assert backbone["lora", "PGD"] == [
        "lora", "PEFT", "PGD", f"{statistics.fmean(std):.2f} ± {statistics.stdev(std):.2f} (n=3)",
        f"{statistics.fmean(rob):.2f} ± {statistics.stdev(rob):.2f} (n=3)", f"{w['diff']:+.2f}",
        _p_text(stats.ttest_ind(rob, std, equal_var=False).pvalue), "yes"]
    aa = found["backbone"]["methods"][2]["metrics"]["aa"]
    assert backbone["lora", "AA"][5] == f"{aa['diff']:+.2f}" and aa["n_a"] == aa["n_b"] == 3
    assert backbone["full_finetune", "PGD"][-1] == "no"  # not PEFT: finding 1 holds all the same
    assert backbone["linear_probe", "-"][-1] == "not run (missing standard-linear_probe-ranli)"
    assert "full_finetune: AA left out: not every seed has an AA number." in p.of("li", "Findings")

    lp = found["linear_vs_full"]["metrics"]["clean"]
    assert html_tables[1][1][1][:4] == ["clean", f"{lp['mean_a']:.2f} ± {lp['std_a']:.2f} (n=3)",
                                        f"{lp['mean_b']:.2f} ± {lp['std_b']:.2f} (n=3)", f"{lp['diff']:+.2f}"]
    assert html_tables[1][1][1][4] == f"[{lp['ci'][0]:.2f}, {lp['ci'][1]:.2f}]"

    pooled = found["roli"]["controls"][0]["pooled"]["pgd"]
    diffs = [b - a for ran, roli in (("robust-full_finetune-ranli", "robust-full_finetune-roli"),
                                     ("robust-lora-ranli", "robust-lora-roli"))
             for a, b in zip(known[ran]["pgd"], known[roli]["pgd"])]
    assert pooled["mean"] == pytest.approx(statistics.fmean(diffs)) and pooled["n"] == 6
    pgd_row = next(r for r in html_tables[3][1] if r[0] == "PGD")
    seed_means = [statistics.fmean(diffs[i::3]) for i in range(3)]  # per seed, over the two methods
    assert pgd_row[:6] == ["PGD", "6", f"{pooled['mean']:+.2f} ± {pooled['se']:.2f}",
                           f"[{pooled['ci'][0]:.2f}, {pooled['ci'][1]:.2f}]", _p_text(pooled["p"]),
                           _p_text(stats.ttest_1samp(seed_means, 0).pvalue)]
    assert pgd_row[7] == f"+2.44 ({_p_text(pooled['p_vs_paper'])})"
    quirk = found["quirks"][0]["metrics"]["clean"]
    assert found["quirks"][0]["status"] == "compared" and quirk["p"] is not None
    assert html_tables[4][1][1][:3] == ["clean", "3", f"{quirk['mean']:+.2f} ± {quirk['std']:.2f}"]


def test_html_spec_texts_are_escaped_markup(findings_report):
    out, _, _ = findings_report
    text = (out / "report.html").read_text()
    p = _parse(text)
    assert "<script>" not in text and "script" not in p.starts and "i" not in p.starts
    assert "Set-up: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; with <code>a&lt;b&gt;</code> and " \
           "<strong>bold</strong> and <em>italic</em> &amp; more." in text
    intro = p.of("p", "Findings")[0]
    assert intro == "Set-up: <script>alert('x')</script> with a<b> and bold and italic & more."
    assert p.of("li", "Findings")[:2] == ["first <i>item</i> continued", "second item"]
    assert "<em>small</em>" in text and "<code>B2</code>" in text
    # the closing text after the wall time, its heading an h2 as in report.md
    assert p.of("p", "GPU plan") == ["Run the same cells on a GPU with roli sweep."]
    assert text.index('id="wall-time"') < text.index('id="closing"') < text.index('id="checks"')


def test_html_without_spec_has_no_findings(findings_report):
    _, out, _ = findings_report
    text = (out / "report.html").read_text()
    p = _parse(text)
    assert not (out / "findings.json").exists()
    assert p.of("h1") == ["roli report"] and "Findings" not in p.h2 and 'id="findings"' not in text
    assert "GPU plan" not in text and "Set-up" not in text and "Finding 1." not in text
    assert p.h2 == ["Settings", "Results", "Clean vs robust accuracy", "Validation curves", "Wall time",
                    "AutoAttack and sanity checks", "Runs"]


def test_html_wall_time_table(findings_report):
    out, _, known = findings_report
    p = _parse((out / "report.html").read_text())
    (_, wall), = p.tables_under("Wall time")
    head, *body = wall
    assert head == ["group", "runs", "epochs", "s per run", "s per epoch", "AA s per run", "minutes in all"]
    assert [r[0] for r in body] == [*FINDING_GROUPS, "all"]
    for row in body[:-1]:
        k = known[row[0]]
        assert row[1] == "3" and row[3] == f"{statistics.fmean(k['seconds']):.0f}"
        assert row[5] == (f"5 (n={len(k['aa'])})" if k["aa"] else "–")
        assert row[6] == f"{sum(k['seconds']) / 60:.1f}"
    total = sum(s for k in known.values() for s in k["seconds"])
    aa_total = 5.0 * sum(len(k["aa"]) for k in known.values())
    assert body[-1] == ["all", str(3 * len(known)), "", "", "", f"{aa_total / 60:.1f} min in all", f"{total / 60:.1f}"]
    notes = p.of("p", "Wall time")
    assert len(notes) == 1 and f"In all {(total + aa_total) / 3600:.2f} h." in notes[0]
    assert p.of("code", "Wall time") == ["seconds", "roli eval"]


def test_spec_text_markup():
    from roli.report.html import _text

    html = _text("# Plan\n\nOne *a* **b**\nline two.\n\n- x `c*d*`\n  y\n- z\n\n1. one\n2. <two>", level=2)
    assert html == ("<h2>Plan</h2><p>One <em>a</em> <strong>b</strong> line two.</p>"
                    "<ul><li>x <code>c*d*</code> y</li><li>z</li></ul><ol><li>one</li><li>&lt;two&gt;</li></ol>")
    assert _text("### Deep", level=4) == "<h4>Deep</h4>" and _text("2 * 3 * 4") == "<p>2 * 3 * 4</p>"
    assert _text("") == ""


def _lr_runs(root: Path, lrs: dict[str, list[float]]) -> list[Path]:
    """full_finetune runs (2 seeds each) at the given learning rates per init."""
    dirs = []
    for init, rates in lrs.items():
        for lr in rates:
            for seed in (0, 1):
                d = root / f"ft-{init}-lr{lr}-s{seed}"
                res = _results(d, method="full_finetune", init=init, seed=seed, clean=70.0 + seed, pgd=40.0)
                res["config"]["train"]["lr"] = lr
                (d / "results.json").write_text(json.dumps(res))
                dirs.append(d)
    return dirs


def test_a_rate_tuned_per_init_is_a_note_not_a_variant(tmp_path):
    """RanLI and RoLI at their own tuned rates share one paper-table row (the rates in a note under the table);
    two rates within one init are two rows, named by their rate."""
    dirs = _lr_runs(tmp_path / "a", {"ranli": [0.003], "roli": [0.001]})
    gs = groups(collect(dirs))
    assert [(g["variant"], g["per_init"]) for g in gs] == [("", "train.lr=0.003"), ("", "train.lr=0.001")]
    text = write_report(tmp_path / "ra", dirs).read_text()
    assert [r[0] for r in _md_tables(text)["vit_a"][1:]] == ["full_finetune"]
    assert ("full_finetune on synthetic: train.lr=0.003 (RanLI) / train.lr=0.001 (RoLI)." in text)
    html = (tmp_path / "ra" / "report.html").read_text()
    assert "full_finetune on synthetic: train.lr=0.003 (RanLI) / train.lr=0.001 (RoLI)." in html

    dirs = _lr_runs(tmp_path / "b", {"ranli": [0.003, 0.01], "roli": [0.001]})
    gs = groups(collect(dirs))
    assert [g["variant"] for g in gs] == ["train.lr=0.003", "train.lr=0.01", "train.lr=0.001"]
    assert all(g["per_init"] == "" for g in gs)
    text = write_report(tmp_path / "rb", dirs).read_text()
    assert [r[0] for r in _md_tables(text)["vit_a"][1:]] == [
        "full_finetune (train.lr=0.003)", "full_finetune (train.lr=0.01)", "full_finetune (train.lr=0.001)"]
    assert "Set per init" not in text
    dirs = _lr_runs(tmp_path / "c", {"ranli": [0.003], "roli": [0.001]}) + _lr_runs(tmp_path / "c2", {"ranli": [0.003]})
    for d in dirs[-2:]:  # a head-init variant run with RanLI only: the note names its method's two inits, not it
        res = json.loads((d / "results.json").read_text())
        res["config"]["transfer"]["head_init"] = "paper"
        (d / "results.json").write_text(json.dumps(res))
    text = write_report(tmp_path / "rc", dirs).read_text()
    assert "full_finetune on synthetic: train.lr=0.003 (RanLI) / train.lr=0.001 (RoLI)." in text
    assert "(head_init=paper) on synthetic" not in text


def test_paper_table_rows_in_the_papers_method_order(tmp_path):
    dirs = [tmp_path / f"{m}-ranli-s0" for m in ("vpt_deep", "my_method", "lora", "linear_probe")]
    for d, m in zip(dirs, ("vpt_deep", "my_method", "lora", "linear_probe")):
        _results(d, method=m, init="ranli", seed=0, clean=70.0, pgd=40.0)
    rows = _md_tables(write_report(tmp_path / "r", dirs).read_text())["vit_a"][1:]
    assert [r[0] for r in rows] == ["linear_probe", "lora", "vpt_deep", "my_method"]
