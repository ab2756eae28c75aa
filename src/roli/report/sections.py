"""The findings as data: `sections(result)` gives per finding (and for the quirk comparisons) its heading,
statement, tables (header and rows of formatted cells, plus note lines), rule, verdict sentence and discussion, so
that the markdown and HTML renderers lay them out without knowing any column.
"""

from __future__ import annotations

from typing import Any

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
             signed(w["diff"]), ci_text(w), test_text(w), w["verdict"] + (" (underpowered)" if w["underpowered"] else "")]
            for m, w in f["metrics"].items()]
    return [_tbl(["metric", "linear probe", "full finetune", "LP - FT", f"{1 - f['alpha']:.0%} CI", "Welch",
                  "verdict"], rows, _note_lines([("", f)]))]


def _tables_roli(f: dict) -> list[dict]:
    if f["status"] == "not run":
        return []
    rows = []
    for r in f["methods"]:
        if r["missing"] or not r["seeds"]:
            why = f"missing {', '.join(r['missing'])}" if r["missing"] else "no common seed"
            rows.append([r["method"], "-", "-", "-", "-", "-", f"not run ({why})"])
        for metric, s in r.get("metrics", {}).items():
            rows.append([r["method"], NAMES[metric], str(s["n"]), f"{signed(s['mean'])} ± {num(s['std'])}", ci_text(s),
                         test_text(s) + (" (1 df)" if s["n"] == 2 and s["p"] is not None else ""), s["verdict"]])
    pooled = []
    for metric, s in f["pooled"].items():
        if "verdict" not in s:
            pooled.append([NAMES[metric], "-", "-", "-", "-", "-", "-", s["note"]])
            continue
        paper = "-" if s["paper"] is None else signed(s["paper"]) + (
            "" if s["paper_in_ci"] is None else " (in CI)" if s["paper_in_ci"] else " (outside CI)")
        pooled.append([NAMES[metric], str(s["n"]), f"{signed(s['mean'])} ± {num(s['se'])}", ci_text(s), test_text(s),
                       pvalue(s["sign_flip_p"]), paper, s["verdict"]])
    return [_tbl(["method", "metric", "pairs", "RoLI - RanLI (mean ± std)", "CI", "paired t", "verdict"], rows,
                 _note_lines([(f"{r['method']}: ", r) for r in f["methods"]])),
            _tbl(["metric", "pairs", "mean ± SE", "CI", "paired t", "sign-flip", "paper", "verdict"], pooled,
                 caption="Pooled over (method, seed) pairs:")]


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
