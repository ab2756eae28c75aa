"""`roli report --findings SPEC --doc PATH`: the findings computed on the report's seed groups land in findings.json
and report.md (between the settings and the tables), the doc copy links the figures relative to itself, and the
wall-time table adds up the runs' seconds."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from roli.cli.main import main
from roli.errors import ConfigError, ResultsError
from roli.report.collect import collect
from roli.report.findings import findings
from roli.report.groups import groups
from roli.report.spec import load_spec, validate_spec
from roli.report.tables import cost_table
from roli.report.write import archive, write_report

SPEC = {"title": "tiny study", "robust": "robust", "standard": "standard", "methods": ["linear_probe", "lora"],
        "intro": "Set-up <b>here</b>.", "discussion": {"roli": "Why RoLI went this way."},
        "closing": "Run it on a GPU next.",
        "compare": [{"name": "zero adapter", "default": "robust-lora-ranli", "variant": "quirk-lora-ranli"}]}
# (label, method, init) -> per-seed (clean, pgd); seconds = 10 * (seed + 1)
CELLS = {("robust", "linear_probe", "ranli"): [(70, 50), (71, 51), (69, 49)],
         ("robust", "lora", "ranli"): [(72, 48), (74, 47), (73, 49)],
         ("robust", "lora", "roli"): [(75, 52), (76, 53), (77, 51)],
         ("standard", "linear_probe", "ranli"): [(60, 1), (61, 2), (62, 1)],
         ("standard", "lora", "ranli"): [(65, 5), (64, 6), (66, 4)],
         ("quirk", "lora", "ranli"): [(71, 45), (73, 46), (72, 47)]}


def _write(root: Path, prefix: str, method: str, init: str, seed: int, clean: float, pgd: float) -> Path:
    d = root / f"{prefix}-{method}-{init}-s{seed}"
    d.mkdir(parents=True)
    cfg = {"backbone": {"name": f"vit_{prefix}"}, "data": {"name": "synthetic"},
           "threat": {"norm": "linf", "eps": 0.1}, "attack": {"name": "pgd", "steps": 5},
           "transfer": {"name": method, "init": init, **({"rank": 4} if prefix == "quirk" else {})},
           "train": {"epochs": 4}, "run": {"seed": seed, "name": d.name}}
    res = {"status": "complete", "config": cfg, "method": method, "init": init, "selected_epoch": 4,
           "best_val": {"clean": clean, "robust": pgd}, "seconds": 10.0 * (seed + 1), "device": "cpu (AVX2, 1 threads)",
           "test": {"clean": clean, "pgd": pgd, "n": 100, "attack": {"name": "pgd", "steps": 10}}}
    (d / "results.json").write_text(json.dumps(res))
    return d


@pytest.fixture
def study(tmp_path) -> list[Path]:
    return [_write(tmp_path / "runs", *key, seed, *v) for key, vals in CELLS.items() for seed, v in enumerate(vals)]


def test_findings_json_and_report_sections(study, tmp_path):
    out = tmp_path / "report"
    write_report(out, study, spec=validate_spec(SPEC))
    found = json.loads((out / "findings.json").read_text())
    expect = findings({g["label"]: g["per_seed"] for g in groups(collect(study))}, SPEC)
    assert found == json.loads(json.dumps(expect))
    # the paired RoLI - RanLI gain of lora is computed from the runs' numbers: (75-72 + 76-74 + 77-73) / 3 = 3
    lora = next(m for m in found["roli"]["controls"][0]["methods"] if m["method"] == "lora")
    assert lora["metrics"]["clean"]["mean"] == pytest.approx(3.0)
    text = (out / "report.md").read_text()
    assert text.startswith("# tiny study\n")
    order = [text.index(s) for s in ("Settings:", "\n## Findings\n", "Set-up <b>here</b>.", "\n### Finding 1. ",
                                     "\n### Finding 3. ", "Why RoLI went this way.", "\n### Reference quirks",
                                     "\n#### zero adapter\n", "## Results", "## Wall time", "Run it on a GPU next.",
                                     "## Runs")]
    assert order == sorted(order)
    assert "\n## Finding " not in text  # the findings one level below their "## Findings", as in report.html
    assert found["roli"]["sentence"] in text and found["backbone"]["sentence"] in text


def test_without_a_spec_there_are_no_findings(study, tmp_path):
    write_report(tmp_path / "a", study, spec=validate_spec(SPEC))
    write_report(tmp_path / "a", study)  # regenerated without a spec: the old findings.json goes
    assert not (tmp_path / "a" / "findings.json").exists()
    text = (tmp_path / "a" / "report.md").read_text()
    assert text.startswith("# roli report\n") and "## Finding" not in text


def test_doc_links_figures_relative_to_itself(study, tmp_path):
    out, doc = tmp_path / "docs" / "results", tmp_path / "docs" / "results.md"
    write_report(out, study, spec=validate_spec(SPEC), doc=doc)
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", doc.read_text())
    assert links and all(link.startswith("results/") and (doc.parent / link).is_file() for link in links)
    assert doc.read_text().replace("](results/", "](") == (out / "report.md").read_text()


def test_wall_time_adds_up_the_runs(study):
    rows = collect(study)
    head, body, notes = cost_table(groups(rows), rows)
    by = {r[0]: dict(zip(head, r)) for r in body}
    assert by["robust-lora-roli"]["s per run"] == "20" and by["robust-lora-roli"]["s per epoch"] == "5.0"
    assert by["all"]["runs"] == str(len(study))
    assert float(by["all"]["minutes in all"]) == pytest.approx(round(6 * 60 / 60, 1))
    assert "cpu (AVX2, 1 threads)" in notes[0]
    for r in rows:
        r["device"] = None
    notes = cost_table(groups(rows), rows)[2]
    assert "`seconds`) (machine not recorded); AutoAttack" in notes[0] and " on not recorded" not in notes[0]


def _cells(line: str) -> list[str]:
    """A markdown table line's cells, split at the `|` that are not escaped."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def test_a_bar_in_names_keeps_the_markdown_tables_columns(tmp_path):
    """A `|` in a method, run or group name, or in a compare name, is escaped in every report.md table."""
    cells = {(p, "lo|ra" if m == "lora" else m, i): v for (p, m, i), v in CELLS.items()}
    dirs = [_write(tmp_path / "runs", *key, seed, *v) for key, vals in cells.items() for seed, v in enumerate(vals)]
    spec = {**SPEC, "methods": ["linear_probe", "lo|ra"],
            "compare": [{"name": "zero | adapter", "default": "robust-lo|ra-ranli", "variant": "quirk-lo|ra-ranli"}]}
    write_report(tmp_path / "out", dirs, spec=validate_spec(spec))
    text = (tmp_path / "out" / "report.md").read_text()
    assert "\n#### zero | adapter\n" in text
    tables, table = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if table is None:
                table = []
                tables.append(table)
            table.append(line)
        else:
            table = None
    assert len(tables) >= 6  # findings 1 and 3 (two), the quirk, the paper tables, wall time, runs
    for t in tables:
        width = len(_cells(t[0]))
        assert all(len(_cells(line)) == width for line in t[2:]), t
    rows = [_cells(line) for t in tables for line in t[2:]]
    assert ["lo\\|ra", "PEFT", "PGD"] in [r[:3] for r in rows]  # finding 1's row of the PEFT method
    assert any(r[0] == "robust-lo\\|ra-roli" for r in rows)  # the wall-time table's group
    assert any(r[0] == "robust-lo\\|ra-roli-s0" for r in rows)  # the per-run table's run
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<td>lo|ra</td>" in html and "lo\\|ra" not in html  # HTML cells need no escape for it


@pytest.mark.parametrize("bad, words", [({"intro": 3}, "intro must be text"),
                                        ({"discussion": {"finding9": "x"}}, "unknown key discussion.finding9"),
                                        ({"discussion": {"roli": ""}}, "discussion.roli must be a non-empty"),
                                        ({"title": ""}, "title must be")])
def test_bad_texts_in_a_spec(bad, words):
    with pytest.raises(ConfigError, match=words):
        validate_spec({**SPEC, **bad})


def test_cli_bad_spec_fails_before_reading_runs(study, tmp_path, capsys):
    spec = tmp_path / "f.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "alpah": 0.1}))
    assert main(["report", str(tmp_path / "nowhere"), "--findings", str(spec)]) == 2  # not "no results.json"
    assert f"{spec}: findings spec: unknown key 'alpah'" in capsys.readouterr().err
    spec.write_text(yaml.safe_dump(SPEC))
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--findings", str(spec),
                 "--doc", str(tmp_path / "doc.md")]) == 0
    assert load_spec(spec)["title"] == "tiny study"
    assert os.path.isfile(tmp_path / "rep" / "findings.json") and (tmp_path / "doc.md").read_text().startswith("# tiny")


def test_archive_keeps_small_files_and_regenerates_the_same_report(study, tmp_path):
    (study[0] / "best.pt").write_bytes(b"weights")
    (study[0] / "eval-synthetic-test-full.json").write_text("{}")
    failed = _write(tmp_path / "runs", "robust", "bitfit", "ranli", 0, 1, 1)
    res = json.loads((failed / "results.json").read_text())
    (failed / "results.json").write_text(json.dumps({**res, "status": "failed"}))
    dest = tmp_path / "archive"
    copies = archive([*study, failed], dest)
    assert [c.name for c in copies] == [d.name for d in study]  # the failed run is not archived
    assert sorted(p.name for p in (dest / study[0].name).iterdir()) == ["eval-synthetic-test-full.json", "results.json"]
    write_report(tmp_path / "a", study, spec=validate_spec(SPEC))
    write_report(tmp_path / "b", copies, spec=validate_spec(SPEC))
    assert (tmp_path / "a" / "findings.json").read_text() == (tmp_path / "b" / "findings.json").read_text()
    twin = _write(tmp_path / "other", "robust", "lora", "roli", 0, 1, 1)
    with pytest.raises(ResultsError, match="two runs are named 'robust-lora-roli-s0'"):
        archive([*study, twin], dest)
