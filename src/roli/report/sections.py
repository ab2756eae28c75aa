"""The findings as data: `sections(result)` gives per finding (and for the quirk comparisons) its heading,
statement, tables (header and rows of formatted cells, plus note lines), rule, verdict sentence and discussion, so
that the markdown and HTML renderers lay them out without knowing any column.
"""

from __future__ import annotations

from typing import Any

from roli.report.finding_roli import why_not_run
from roli.report.spec import NAMES
from roli.report.wording import ci_text, num, pm, pvalue, signed, test_text


def _note_lines(items: list[tuple[str, dict]]) -> list[str]:
    """What a table leaves out (AA without every seed, seeds without a partner), one line each."""
    out = []
    for who, r in items:
        if r.get("aa_note"):
            out.append(f"{who}{r['aa_note']}.")
        if r.get("unpaired_seeds"):
            out.append(f"{who}seeds {', '.join(map(str, r['unpaired_seeds']))} are in only one of the two groups "
                       "and left out of the pairing.")
    return out


def _tbl(header: list[str], rows: list[list[str]], notes: list[str] | None = None, caption: str = "") -> dict:
    """One table: an optional caption line above it, header, rows of cells and note lines below it."""
    return {"caption": caption, "header": header, "rows": rows, "notes": notes or []}


def _tables_backbone(f: dict) -> list[dict]:
    rows = []
    for r in f["methods"]:
        kind = "PEFT" if r["peft"] else "not PEFT"
        if r["missing"]:
            rows.append([r["method"], kind, "-", "-", "-", "-", "-", f"not run (missing {', '.join(r['missing'])})"])
        for metric, w in r["metrics"].items():
            rows.append([r["method"], kind, NAMES[metric], f"{pm(w['mean_b'], w['std_b'])} (n={w['n_b']})",
                         f"{pm(w['mean_a'], w['std_a'])} (n={w['n_a']})", signed(w["diff"]), test_text(w),
                         "yes" if w["large"] else "no"])
    return [_tbl(["method", "kind", "metric", "standard backbone", "robust backbone", "robust - standard", "Welch",
                  "large margin"], rows, _note_lines([(f"{r['method']}: ", r) for r in f["methods"]]))]


def _tables_linear(f: dict) -> list[dict]:
    if f["status"] == "not run":
        return []
    rows = [[NAMES[m], f"{pm(w['mean_a'], w['std_a'])} (n={w['n_a']})", f"{pm(w['mean_b'], w['std_b'])} (n={w['n_b']})",
             signed(w["diff"]), ci_text(w), test_text(w), test_text(w["tost"]), w["verdict"]]
            for m, w in f["metrics"].items()]
    margin = next((w["tost"]["margin"] for w in f["metrics"].values()), None)
    return [_tbl(["metric", "linear probe", "full finetune", "LP - FT", f"{1 - f['alpha']:.0%} CI", "Welch",
                  f"TOST ±{margin:g}" if margin is not None else "TOST", "verdict"], rows, _note_lines([("", f)]))]


def _control_rows(c: dict) -> list[list[str]]:
    """Per method and metric: RoLI - control, its CI, paired t, Holm-adjusted p, TOST p and verdict."""
    rows = []
    for r in c["methods"]:
        if r["missing"] or not r.get("seeds"):
            why = f"missing {', '.join(r['missing'])}" if r["missing"] else "no common seed"
            rows.append([r["method"], "-", "-", "-", "-", "-", "-", "-", f"not run ({why})"])
        for metric, s in r.get("metrics", {}).items():
            rows.append([r["method"], NAMES[metric], str(s["n"]), f"{signed(s['mean'])} ± {num(s['std'])}", ci_text(s),
                         test_text(s), pvalue(s["holm_p"]) if s.get("holm_p") is not None else "-",
                         test_text(s["tost"]), s["verdict"]])
    return rows


def _pooled_rows(c: dict) -> list[list[str]]:
    """Per metric: the two-way (method + seed) mean gain, its test, the seed-cluster test, carriers, the paper."""
    rows = []
    for metric, s in c["pooled"].items():
        paper = "-" if s.get("paper") is None else f"{signed(s['paper'])} ({test_text({'p': s['p_vs_paper']})})"
        rows.append([NAMES[metric], str(s["n"]), f"{signed(s['mean'])} ± {num(s['se'])}", ci_text(s), test_text(s),
                     test_text(s["seed_cluster"]), ", ".join(s["carried_by"]) or "-", paper])
    return rows


def _tables_roli(f: dict) -> list[dict]:
    out = []
    for c in f["controls"]:
        if c["status"] == "not run":
            out.append(_tbl(["control", "status"], [[c["name"], f"not run ({why_not_run(c)})"]]))
            continue
        out.append(_tbl(["method", "metric", "pairs", f"RoLI - {c['name']} (mean ± std)", "CI", "paired t", "Holm p",
                         f"TOST ±{f['margin']:g}", "verdict"], _control_rows(c),
                        _note_lines([(f"{r['method']}: ", r) for r in c["methods"]]),
                        caption=f"RoLI - {c['name']}, per method (paired by seed, Holm over the methods):"))
        if c["pooled"]:
            out.append(_tbl(["metric", "pairs", "mean ± SE", "CI", "two-way t", "seed-cluster t", "carried by",
                             "paper (p vs it)"], _pooled_rows(c),
                            caption=f"RoLI - {c['name']} pooled over methods (two-way method + seed model; "
                                    "seed-cluster = t-test on the per-seed mean gains):"))
    return out


def _tables_quirk(e: dict) -> list[dict]:
    if e["status"] == "not run":
        return []
    rows = [[NAMES[m], str(s["n"]), f"{signed(s['mean'])} ± {num(s['std'])}", ci_text(s), test_text(s), pvalue(s["sign_flip_p"]),
             s["verdict"]] for m, s in e["metrics"].items()]
    return [_tbl(["metric", "pairs", "variant - default (mean ± std)", "CI", "paired t", "sign-flip", "verdict"], rows,
                 _note_lines([("", e)]))]


HEADINGS = {"backbone": "Finding 1. Standard vs robust backbone under adversarial PEFT",
            "linear_vs_full": "Finding 2. Linear probing vs full finetuning (robust backbone)",
            "roli": "Finding 3. RoLI vs RanLI (robust backbone)",
            "quirks": "Reference quirks vs roli defaults (variant - default, paired by seed)"}  # by result key
TABLES = {"backbone": _tables_backbone, "linear_vs_full": _tables_linear, "roli": _tables_roli}


def significance(spec: dict[str, Any]) -> str:
    """The line stating the significance level, above the findings."""
    return f"Significance level alpha = {spec['alpha']:g} (confidence intervals at {1 - spec['alpha']:.0%})."


def sections(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The findings of a `findings` result laid out, in order: per finding {key, heading, statement, tables, rule,
    sentence, status, parts: [], discussion}, then (when the spec compares any) the quirks as {key: "quirks",
    heading, parts, discussion} with statement, rule and sentence None and no tables; each part (a quirk) is
    {heading, tables, sentence}. A table is {caption, header, rows, notes}: its cells formatted, user text as is
    (the renderer escapes it); discussion is the spec's text or None."""
    discussion = result["spec"].get("discussion") or {}
    out = []
    for key, tables in TABLES.items():
        f = result[key]
        out.append({"key": key, "heading": HEADINGS[key], "statement": f["finding"], "tables": tables(f),
                    "rule": f["rule"], "sentence": f["sentence"], "status": f["status"], "parts": [],
                    "discussion": discussion.get(key)})
    if result["quirks"]:
        parts = [{"heading": e["name"], "tables": _tables_quirk(e), "sentence": e["sentence"]}
                 for e in result["quirks"]]
        out.append({"key": "quirks", "heading": HEADINGS["quirks"], "statement": None, "tables": [], "rule": None,
                    "sentence": None, "status": None, "parts": parts, "discussion": discussion.get("quirks")})
    return out
