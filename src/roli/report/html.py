"""report.html: the report as one self-contained HTML5 page (inline CSS from report.css beside this file, PNGs
embedded as data: URLs) to open in a browser, mail or attach; every text from the runs and the findings spec is
escaped. It shows what report.md shows, laid out from the same tables as data.
"""

from __future__ import annotations

import base64
import re
from html import escape
from importlib.resources import files
from itertools import groupby
from pathlib import Path

from roli.files import atomic_write_text
from roli.report.sections import sections, significance
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

NUMBER = re.compile(r"[-–0-9./]+")  # cells right-aligned in the per-run table
WALL = re.compile(r"[-–0-9./]+|[0-9]+ \(n=[0-9]+\)|[0-9.]+ min in all")  # right-aligned wall-time cells
STAT = re.compile(r"[-+]?\d|\[-?\d")  # findings-table cells that start with a number (or a CI) are right-aligned
STATUS = {"holds": "ok", "does not hold": "bad", "partly holds": "mixed"}  # verdict colour by finding status
HEADING = re.compile(r"(#{1,6})\s+(.*)")
BULLET = re.compile(r"[-*]\s+(.*)")
ORDERED = re.compile(r"\d+[.)]\s+(.*)")
CSS = files("roli.report").joinpath("report.css").read_text()  # package data, inlined into every page
TITLES = {"scatter": "Clean vs robust accuracy", "curves": "Validation curves", "eps": "Accuracy vs eps"}


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _span(text: str) -> str:
    """A line of markdown-ish text as escaped HTML: `code` spans, **bold** and *italic* (outside code)."""
    out = []
    for i, part in enumerate(re.split(r"`([^`]+)`", text)):
        if i % 2:
            out.append(f"<code>{escape(part)}</code>")
            continue
        part = re.sub(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", r"<strong>\1</strong>", escape(part))
        out.append(re.sub(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])", r"<em>\1</em>", part))
    return "".join(out)


def _text(text: str, level: int = 3) -> str:
    """Markdown-ish text from the findings spec (intro, discussion, closing) as escaped HTML: paragraphs (blank-line
    separated), "- " / "1. " lists (a line that is neither continues the item), "#" headings (at `level` or below)
    and the inline marks of `_span`."""
    html: list[str] = []
    para: list[str] = []
    items: list[list[str]] = []
    kind = ""

    def flush() -> None:
        nonlocal kind
        if para:
            html.append(f"<p>{_span(' '.join(para))}</p>")
            para.clear()
        if items:
            lis = "".join(f"<li>{_span(' '.join(item))}</li>" for item in items)
            html.append(f"<{kind}>{lis}</{kind}>")
            items.clear()
        kind = ""

    for raw in text.strip().splitlines():
        line = raw.strip()
        heading, bullet, ordered = HEADING.fullmatch(line), BULLET.fullmatch(line), ORDERED.fullmatch(line)
        if not line or heading:
            flush()
            if heading:
                h = min(6, max(level, len(heading[1])))
                html.append(f"<h{h}>{_span(heading[2])}</h{h}>")
        elif bullet or ordered:
            want = "ul" if bullet else "ol"
            if para or kind != want:
                flush()
            kind = want
            items.append([(bullet or ordered)[1]])
        elif items:
            items[-1].append(line)
        else:
            para.append(line)
    flush()
    return "".join(html)


def _paper_table(t: dict) -> str:
    """A paper-shape table: three header rows (dataset, init, metric), a line before each dataset × init block."""
    cols = t["columns"]
    starts = {i for i, c in enumerate(cols) if i == 0 or c[:2] != cols[i - 1][:2]}
    head = ['<tr><th rowspan="3">method</th>']
    head += [f'<th class="start" colspan="{len(list(block))}">{escape(d)}</th>'
             for d, block in groupby(cols, key=lambda c: c[0])]
    head += ["</tr><tr>"]
    head += [f'<th class="start" colspan="{len(list(block))}">{escape(INITS.get(i, i))}</th>'
             for (_, i), block in groupby(cols, key=lambda c: c[:2])]
    head += ["</tr><tr>"]
    head += [f'<th{" class=start" if i in starts else ""}>{escape(column_name(c[2]))}</th>'
             for i, c in enumerate(cols)]
    head += ["</tr>"]
    body = []
    for r in t["rows"]:
        cells = "".join(f'<td class="{"n" if cols[i][2] == "n" else "num"}{" start" if i in starts else ""}">'
                        f"{escape(v)}</td>" for i, v in enumerate(r["cells"]))
        body.append(f"<tr><th scope=\"row\">{escape(row_name(r))}</th>{cells}</tr>")
    notes = (f'<p class="note">{escape(PER_INIT_NOTE)}: ' + "; ".join(map(escape, t["notes"])) + ".</p>"
             if t["notes"] else "")
    return (f"<h3>{escape(t['backbone'])}</h3><div class=\"scroll\"><table class=\"paper\"><thead>{''.join(head)}"
            f"</thead><tbody>{''.join(body)}</tbody></table></div>{notes}")


def _plain_table(head: list[str], body: list[list[str]], number=NUMBER.fullmatch, cls: str = "",
                 foot: int = 0) -> str:
    """A one-header table; cells `number` accepts are right-aligned; the last `foot` rows (totals) go in <tfoot>."""
    def tr(row: list[str]) -> str:
        return "<tr>" + "".join(f'<td{" class=num" if number(c) else ""}>{escape(c)}</td>' for c in row) + "</tr>"

    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    rows, tail = (body[:-foot], body[-foot:]) if foot else (body, [])
    tfoot = f"<tfoot>{''.join(map(tr, tail))}</tfoot>" if tail else ""
    return (f'<div class="scroll"><table{f" class={cls}" if cls else ""}><thead><tr>{ths}</tr></thead>'
            f"<tbody>{''.join(map(tr, rows))}</tbody>{tfoot}</table></div>")


def _stats_tables(tables: list[dict]) -> str:
    """A section's findings tables: each its caption, the table (numbers right-aligned) and its note lines."""
    html = []
    for t in tables:
        html.append(f"<p>{escape(t['caption'])}</p>" if t["caption"] else "")
        html.append(_plain_table(t["header"], t["rows"], number=STAT.match, cls="stats"))
        if t["notes"]:
            html.append(f'<ul class="note">{"".join(f"<li>{escape(x)}</li>" for x in t["notes"])}</ul>')
    return "".join(html)


def _findings(found: dict) -> str:
    """The findings section: the spec's intro, alpha, per finding its statement, table(s), rule, verdict sentence and
    discussion, then the quirk comparisons (what `markdown.findings_markdown` writes, as HTML)."""
    spec = found["spec"]
    parts = ['<section id="findings"><h2>Findings</h2>', _text(spec.get("intro") or ""),
             f'<p class="note">{escape(significance(spec))}</p>']
    for s in sections(found):
        key = s["key"]
        parts += [f'<section id="{key if key == "quirks" else f"finding-{key}"}"><h3>{escape(s["heading"])}</h3>']
        if s["statement"]:
            parts.append(f'<p class="statement"><em>{escape(s["statement"])}</em></p>')
        parts.append(_stats_tables(s["tables"]))
        if s["rule"]:
            parts.append(f'<p class="note">Rule: {escape(s["rule"])}</p>')
        if s["sentence"]:
            parts.append(f'<p class="verdict {STATUS.get(s["status"], "none")}"><strong>{escape(s["sentence"])}'
                         "</strong></p>")
        parts += [f"<h4>{escape(q['heading'])}</h4>{_stats_tables(q['tables'])}<p>{escape(q['sentence'])}</p>"
                  for q in s["parts"]]
        parts += [_text(s["discussion"], 4) if s["discussion"] else "", "</section>"]
    return "".join(parts) + "</section>"


def _figure(out: Path, key: str, png: str, caption: str) -> str:
    data = base64.b64encode((out / png).read_bytes()).decode()
    return (f'<section id="{key}"><h2>{escape(TITLES[key])}</h2><figure><img alt="{escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape(caption)} ({escape(png)})</figcaption>'
            "</figure></section>")


def write_html(path: Path, rows: list[dict], gs: list[dict], figures: dict[str, tuple[str, str]],
               found: dict | None = None) -> None:
    """Write report.html: settings, the findings (with a findings result `found`, see `findings.findings`), the
    paper-shape tables, the figures, the wall time (and the spec's closing text), AutoAttack notes and sanity checks,
    and the per-run table (collapsed): what report.md shows."""
    title = found["spec"]["title"] if found else "roli report"
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in settings(rows).items())
    parts = [(f"<h1>{escape(title)}</h1><p class=\"meta\">{len(rows)} runs in {len(gs)} groups (a group: runs that "
              "differ only in seed)</p>"), f'<section id="settings"><h2>Settings</h2><dl class="settings">{dl}</dl></section>',
             *([_findings(found)] if found else []),
             f'<section id="results"><h2>Results</h2><p class="note">{escape(RESULTS_NOTE)}</p>',
             *(_paper_table(t) for t in paper_tables(gs)), "</section>"]
    parts += [_figure(path.parent, k, png, caption) for k, (png, caption) in figures.items()]
    head, body, notes = cost_table(gs, rows)
    parts.append(f'<section id="wall-time"><h2>Wall time</h2>{_plain_table(head, body, number=WALL.fullmatch, foot=1)}'
                 + "".join(f'<p class="note">{_inline(n)}</p>' for n in notes) + "</section>")
    if found and found["spec"].get("closing"):
        parts.append(f'<section id="closing">{_text(found["spec"]["closing"], 2)}</section>')
    items = "".join(f'<li{" class=fail" if failed else ""}>{_inline(text)}</li>'
                    for entry in sanity(gs, rows) for failed, text in sanity_lines(entry))
    notes = "".join(f'<p class="note">{_inline(n)}</p>' for n in aa_notes(rows))
    parts.append(f'<section id="checks"><h2>AutoAttack and sanity checks</h2>{notes}<ul class="checks">{items}</ul>'
                 "</section>")
    if flags := integrity_lines(rows):
        items = "".join(f'<li{" class=fail" if flagged else ""}>{_inline(text)}</li>' for flagged, text in flags)
        parts.append(f'<section id="integrity"><h2>Integrity flags</h2><p class="note">{_inline(INTEGRITY_NOTE)}'
                     f'</p><ul class="checks">{items}</ul></section>')
    n = "/".join(map(str, sorted({r["n_test"] for r in rows})))
    mismatch = "".join(f'<p class="note">{escape(t)}</p>' for t in threat_notes(rows))
    parts.append(f'<section id="runs"><h2>Runs</h2><details><summary>per-run table ({len(rows)} runs)</summary>'
                 f"{_plain_table(*run_table(rows))}<p class=\"note\">Accuracies in %; test on {n} images; epoch = "
                 f"selected (best validation PGD accuracy).</p>{mismatch}</details></section>")
    atomic_write_text(path, '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                            '<meta name="viewport" content="width=device-width, initial-scale=1">'
                            f"<title>{escape(title)}</title><style>\n{CSS}</style></head>\n<body><main>\n"
                            + "\n".join(parts) + "\n</main></body></html>\n")
