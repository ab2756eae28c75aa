"""report.html: the report as one self-contained HTML5 page (inline CSS, PNGs embedded as data: URLs) to open in
a browser, mail or attach; every text from the runs is escaped.
"""

from __future__ import annotations

import base64
import re
from html import escape
from itertools import groupby
from pathlib import Path

from roli.evaluation.report import (
    INITS,
    RESULTS_NOTE,
    aa_notes,
    column_name,
    paper_tables,
    row_name,
    run_table,
    sanity,
    sanity_lines,
    settings,
)
from roli.files import atomic_write_text

NUMBER = re.compile(r"[-–0-9./]+")  # cells right-aligned in the per-run table
TITLES = {"scatter": "Clean vs robust accuracy", "curves": "Validation curves", "eps": "Accuracy vs eps"}
CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232a; margin: 0;
       background: #f6f7f9; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #dde1e6; }
h3 { font-size: 16px; margin: 18px 0 8px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
p.note, figcaption, .meta { color: #57606a; font-size: 13.5px; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.settings dt { font-weight: 600; color: #57606a; }
dl.settings dd { margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; margin: 6px 0 10px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e7eb; text-align: left; white-space: nowrap; }
thead th { background: #f0f2f5; font-weight: 600; text-align: center; }
thead tr:last-child th { border-bottom: 2px solid #b8c0c9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.n { color: #6e7781; text-align: center; }
.start { border-left: 2px solid #c9d1d9; }
tbody tr:hover { background: #f5f8ff; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e7eb; }
ul.checks { padding-left: 20px; }
ul.checks li.fail { color: #b42318; font-weight: 600; }
code { font-size: 13px; background: #f0f2f5; padding: 1px 4px; border-radius: 3px; }
details summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


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
    return (f"<h3>{escape(t['backbone'])}</h3><div class=\"scroll\"><table class=\"paper\"><thead>{''.join(head)}"
            f"</thead><tbody>{''.join(body)}</tbody></table></div>")


def _plain_table(head: list[str], body: list[list[str]]) -> str:
    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f'<td{" class=num" if NUMBER.fullmatch(c) else ""}>{escape(c)}</td>' for c in row)
                  + "</tr>" for row in body)
    return f'<div class="scroll"><table><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table></div>'


def _figure(out: Path, key: str, png: str, caption: str) -> str:
    data = base64.b64encode((out / png).read_bytes()).decode()
    return (f'<section id="{key}"><h2>{escape(TITLES[key])}</h2><figure><img alt="{escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape(caption)} ({escape(png)})</figcaption>'
            "</figure></section>")


def write_html(path: Path, rows: list[dict], gs: list[dict], figures: dict[str, tuple[str, str]]) -> None:
    """Write report.html: settings, the paper-shape tables, the figures, AutoAttack notes and sanity checks, and
    the per-run table (collapsed)."""
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in settings(rows).items())
    parts = [(f"<h1>roli report</h1><p class=\"meta\">{len(rows)} runs in {len(gs)} groups (a group: runs that "
              "differ only in seed)</p>"), f'<section id="settings"><h2>Settings</h2><dl class="settings">{dl}</dl></section>',
             f'<section id="results"><h2>Results</h2><p class="note">{escape(RESULTS_NOTE)}</p>',
             *(_paper_table(t) for t in paper_tables(gs)), "</section>"]
    parts += [_figure(path.parent, k, png, caption) for k, (png, caption) in figures.items()]
    items = "".join(f'<li{" class=fail" if failed else ""}>{_inline(text)}</li>'
                    for entry in sanity(gs, rows) for failed, text in sanity_lines(entry))
    notes = "".join(f'<p class="note">{_inline(n)}</p>' for n in aa_notes(rows))
    parts.append(f'<section id="checks"><h2>AutoAttack and sanity checks</h2>{notes}<ul class="checks">{items}</ul>'
                 "</section>")
    n = "/".join(map(str, sorted({r["n_test"] for r in rows})))
    parts.append(f'<section id="runs"><h2>Runs</h2><details><summary>per-run table ({len(rows)} runs)</summary>'
                 f"{_plain_table(*run_table(rows))}<p class=\"note\">Accuracies in %; test on {n} images; epoch = "
                 "selected (best validation PGD accuracy).</p></details></section>")
    atomic_write_text(path, '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                            '<meta name="viewport" content="width=device-width, initial-scale=1">'
                            f"<title>roli report</title><style>{CSS}</style></head>\n<body><main>\n"
                            + "\n".join(parts) + "\n</main></body></html>\n")
