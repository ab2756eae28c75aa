"""The report's pretrain-threat column, integrity flags and AutoAttack substitutions (hand-written results and eval
JSONs): shown in report.md and report.html when some run has them, absent (the archived report unchanged) otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from roli.report.write import write_report

EPS8, EPS4 = 8 / 255, 4 / 255
MISMATCH = "the backbone was pretrained against linf eps 4/255 (known entry x) but this run's threat model is linf eps 8/255"
FLAGS = [
    {"name": "pgd_steps", "verdict": "pass", "message": "PGD-10 45.00% vs PGD-100x5 44.00%: gap 1.00 <= 2 points",
     "threshold": 2.0, "numbers": {"pgd10": 45.0, "pgd100": 44.0, "gap": 1.0}},
    {"name": "pgd_autoattack", "verdict": "flag", "threshold": 3.0, "numbers": {"pgd": 45.0, "autoattack": 30.0},
     "message": "PGD-10 45.00% but AutoAttack 30.00% (gap 15.00 > 3 points): PGD's gradients are masked"},
    {"name": "prompt_path", "verdict": "not run", "message": "no prompt tokens in the model (not VPT)",
     "threshold": None, "numbers": {}},
]
SUBS = [{"attack": "apgd-t", "by": "apgd-dlr", "why": "targeted DLR needs 4 classes", "classes": 3}]


def _run(root: Path, name: str, backbone: dict | None, mismatch: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    res = {"status": "complete", "method": "full_finetune", "init": "roli", "selected_epoch": 2, "seconds": 12.0,
           "config": {"backbone": {"name": "vit_tiny_28"}, "data": {"name": "synthetic"},
                      "threat": {"norm": "linf", "eps": EPS8}, "attack": {"name": "pgd", "steps": 7},
                      "run": {"seed": len(name)}},
           "best_val": {"clean": 70.0, "robust": 40.0},
           "test": {"clean": 72.0, "pgd": 45.0, "n": 200, "attack": {"name": "pgd", "steps": 10}}}
    if backbone is not None:
        res["backbone"] = backbone
        res["threat_mismatch"] = mismatch
    (d / "results.json").write_text(json.dumps(res))
    return d


def _eval(d: Path, integrity: list[dict] | None, subs: list[dict]) -> str:
    threat = {"norm": "linf", "eps": EPS8}
    aa = {"name": "autoattack", "version": "standard", "attacks": ["apgd-ce", "apgd-dlr", "fab-t", "square"],
          "substitutions": subs, **threat}
    ev = {"started": "2024-01-01T00:00:00+00:00", "suite": "full", "data": {"name": "synthetic", "split": "test"},
          "threat": threat, "attack": {"name": "pgd", "steps": 10}, "attacks": {"autoattack": aa},
          "results": {"clean": {"acc": 72.0, "n": 200}, "pgd": {"acc": 45.0, "n": 200},
                      "autoattack": {"acc": 30.0, "n": 200, "seconds": 3.0}}, "checks": []}
    if integrity is not None:
        ev["integrity"] = integrity
    (d / "eval-synthetic-test-full.json").write_text(json.dumps(ev))
    return "eval-synthetic-test-full.json"


def _table(md: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in md.split("\n## Runs\n", 1)[1].splitlines() if ln.startswith("| ")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}


def test_pretrain_threat_column_integrity_flags_and_substitutions(tmp_path):
    a = _run(tmp_path, "a", {"pretrain_threat": {"norm": "linf", "eps": EPS4}, "pretrain_threat_from": "x"}, MISMATCH)
    b = _run(tmp_path, "bb", {"pretrain_threat": {"norm": "linf", "eps": EPS8}, "pretrain_threat_from": "meta"})
    c = _run(tmp_path, "ccc", None)  # a results.json from before the key: unknown
    d = _run(tmp_path, "dddd", {"pretrain_threat": None, "pretrain_threat_from": "known entry vit_b"})
    file = _eval(a, FLAGS, SUBS)
    md = write_report(tmp_path / "out", [a, b, c, d]).read_text()
    cells = {run: row["pretrain threat"] for run, row in _table(md).items()}
    assert cells == {"a": "linf 4/255 ≠ run", "bb": "same", "ccc": "unknown", "dddd": "not robust"}
    assert f"Pretraining threat model differs from the run's:\n\n- a: {MISMATCH}\n" in md
    integrity = md.split("\n## Integrity flags\n", 1)[1].split("\n## ", 1)[0]
    assert "PGD-100 with 5 restarts" in integrity and "differentiates through the prompted forward" in integrity
    assert f"- a: pgd_steps PASS ({file}): PGD-10 45.00% vs PGD-100x5 44.00%: gap 1.00 <= 2 points" in integrity
    assert f"- **a: pgd_autoattack FLAG ({file}): {FLAGS[1]['message']}**" in integrity
    assert f"- a: prompt_path NOT RUN ({file})" in integrity
    assert ("AutoAttack sub-attacks substituted for the class count: apgd-t -> apgd-dlr at 3 classes (targeted DLR "
            "needs 4 classes).") in md

    html = (tmp_path / "out" / "report.html").read_text()
    assert "<th>pretrain threat</th>" in html and "<td>linf 4/255 ≠ run</td>" in html
    section = html.split('<section id="integrity">', 1)[1].split("</section>", 1)[0]
    assert section.count("<li") == 3 and section.count("<li class=fail>") == 1
    assert "a: pgd_autoattack FLAG" in section.split("<li class=fail>", 1)[1].split("</li>", 1)[0]
    assert f"<p class=\"note\">a: {MISMATCH}</p>" in html.replace("&#x27;", "'")
    assert "apgd-t -&gt; apgd-dlr at 3 classes" in html

    json_runs = json.loads((tmp_path / "out" / "report.json").read_text())["runs"]
    assert all("pretrain_threat" not in r and "integrity" not in r for r in json_runs)  # report.json as before


def test_nothing_new_shows_without_the_keys(tmp_path):
    a, b = _run(tmp_path, "a", None), _run(tmp_path, "b", {"pretrain_threat": None, "pretrain_threat_from": None})
    _eval(a, None, [])
    md = write_report(tmp_path / "out", [a, b]).read_text()
    assert "pretrain threat" not in md and "Integrity flags" not in md and "substituted" not in md
    assert "Pretraining threat" not in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="integrity"' not in html and "pretrain threat" not in html
