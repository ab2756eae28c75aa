"""Bad input, clear errors (docs/reliability.md, guarantee 6): every case of tests/reliability/bad_inputs.py through
the CLI exits non-zero with one line on stderr that names the problem (no traceback) and leaves no half-made run
folder; and every case is a row of the table in docs/reliability.md, with a message that holds the same fragments."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.bad_inputs import CASES, Workspace, doc_rows, message, run_argv

pytestmark = pytest.mark.usefixtures("one_thread")
DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def _dirs(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_dir()} if folder.exists() else set()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(case, tmp_path, finished_run):
    ws = Workspace(tmp_path, finished_run=finished_run[0])
    argv = case.argv(ws)
    before = _dirs(ws.out)
    rc, err = run_argv(argv)
    lines = message(err)
    assert rc != 0, err
    assert "Traceback" not in err and len(lines) == 1, err
    for fragment in case.expect:
        assert fragment in lines[0], (fragment, lines[0])
    assert _dirs(ws.out) == before  # nothing trained, no half-made run folder


def test_the_case_list():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    sections = {c.area for c in CASES}
    assert {"backbone", "data", "threat", "attack", "transfer", "train", "stage1", "eval", "run"} <= sections


def test_every_case_is_a_row_of_the_doc_with_its_message():
    rows = doc_rows(DOC.read_text())
    assert list(rows) == [c.id for c in CASES], "regenerate: PYTHONPATH=src:tests python " \
                                                "tests/reliability/bad_inputs.py --write docs/reliability.md"
    for case in CASES:
        for fragment in case.expect:
            assert fragment in rows[case.id], (case.id, fragment, rows[case.id])
