"""The markdown renderer: report.md (settings, findings, paper-shape tables, figures, wall time, sanity checks,
runs) and the findings alone, from the tables as data (`roli.report.tables`, `roli.report.sections`).
"""

from __future__ import annotations

from typing import Any

from roli.report.sections import sections, significance
from roli.report.spec import DEFAULTS
from roli.report.tables import (
    INITS,
    INTEGRITY_NOTE,
    PER_INIT_NOTE,
    RESULTS_NOTE,
    aa_notes,
    column_name,
    cost_table,
    integrity_lines,
    paper_tables,
    row_name,
    run_table,
    sanity,
    sanity_lines,
    settings,
    threat_notes,
)


def md_cell(text: str) -> str:
    """A markdown table cell: a `|` in it (e.g. in a name from the spec) escaped, so it does not split the cell."""
    return str(text).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines, every cell escaped (see `md_cell`)."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(map(md_cell, cells)) + " |"

    return [line(header), "|" + "---|" * len(header), *map(line, rows)]


def _md_tables(tables: list[dict]) -> list[str]:
    lines: list[str] = []
    for t in tables:
        lines += [""] if lines else []
        lines += [t["caption"], ""] if t["caption"] else []
        lines += md_table(t["header"], t["rows"])
        lines += ["", *(f"- {note}" for note in t["notes"])] if t["notes"] else []
    return lines


def findings_markdown(result: dict[str, Any], title: bool = True, closing: bool = True, level: int = 2) -> str:
    """The findings as markdown: per finding a heading (at `level`), a table, the rule and one plain sentence on
    whether it holds; the quirk comparisons one level below theirs (the report places the title and the closing text
    itself: `title`/`closing` False leave them out, and nests the findings one level lower)."""
    spec = result["spec"]
    out = [f"# {spec.get('title') or DEFAULTS['title']}", ""] if title else []
    out += [spec["intro"].strip(), ""] if spec.get("intro") else []
    out += [significance(spec), ""]
    for s in sections(result):
        out += [f"{'#' * level} {s['heading']}", ""]
        out += [f"*{s['statement']}*", ""] if s["statement"] else []
        tables = _md_tables(s["tables"])
        out += (tables + [""]) if tables else []
        out += [f"Rule: {s['rule']}", ""] if s["rule"] else []
        out += [f"**{s['sentence']}**", ""] if s["sentence"] else []
        for part in s["parts"]:
            out += [f"{'#' * (level + 1)} {part['heading']}", ""]
            tables = _md_tables(part["tables"])
            out += (tables + [""]) if tables else []
            out += [part["sentence"], ""]
        out += [s["discussion"].strip(), ""] if s["discussion"] else []
    out += [spec["closing"].strip(), ""] if spec.get("closing") and closing else []
    return "\n".join(out).rstrip() + "\n"


def report_markdown(rows: list[dict], gs: list[dict], figures: dict[str, tuple[str, str]], found: dict | None = None,
             links: str = "") -> str:
    """report.md: settings, the findings (when a spec was given), the paper-shape tables, the figures, the wall
    time, the sanity checks and the per-run table. `links` prefixes the figure paths (a copy kept elsewhere)."""
    title = found["spec"]["title"] if found else "roli report"
    text = [f"# {title}", "", "Settings: " + " · ".join(f"{k} {v}" for k, v in settings(rows).items()), ""]
    if found:  # under their own heading, one level lower than findings_markdown() alone puts them (as report.html)
        text += ["## Findings", "", findings_markdown(found, title=False, closing=False, level=3)]
    text += ["## Results", "", RESULTS_NOTE, ""]
    for t in paper_tables(gs):
        head = ["method"] + [f"{d} {INITS.get(i, i)} {column_name(m)}" for d, i, m in t["columns"]]
        text += [f"### {t['backbone']}", "", *md_table(head, [[row_name(r), *r["cells"]] for r in t["rows"]]), ""]
        text += [f"{PER_INIT_NOTE}: " + "; ".join(t["notes"]) + ".", ""] if t["notes"] else []
    text += [note for n in aa_notes(rows) for note in (n, "")]
    text += ["## Figures", "", *(f"![{caption}]({links}{png})" for png, caption in figures.values()), ""]
    head, body, notes = cost_table(gs, rows)
    text += ["## Wall time", "", *md_table(head, body), "", *notes, ""]
    text += [found["spec"]["closing"].strip(), ""] if found and found["spec"]["closing"] else []
    text += ["## Sanity checks", ""]
    for entry in sanity(gs, rows):
        text += [f"- **{t}**" if failed else f"- {t}" for failed, t in sanity_lines(entry)]
    if flags := integrity_lines(rows):  # only runs evaluated with the flags (archived reports stay as they were)
        text += ["", "## Integrity flags", "", INTEGRITY_NOTE, "",
                 *(f"- **{t}**" if flagged else f"- {t}" for flagged, t in flags)]
    head, body = run_table(rows)
    n = "/".join(map(str, sorted({r["n_test"] for r in rows})))
    text += ["", "## Runs", "", *md_table(head, body), "",
             f"Accuracies in %; test on {n} images; epoch = selected (best validation PGD accuracy).", ""]
    if mismatch := threat_notes(rows):
        text += ["Pretraining threat model differs from the run's:", "", *(f"- {t}" for t in mismatch), ""]
    return "\n".join(text)
