"""The committed study (issue 13): docs/results.md is exactly what `roli report` makes of the archived runs in
docs/results/runs/ with recipes/study/findings.yaml, its figures exist, and the README's results section quotes
no number that the results page does not hold."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from roli.report.spec import load_spec
from roli.report.write import write_report

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    runs = sorted(p.relative_to(REPO) for p in (DOCS / "results" / "runs").iterdir() if p.is_dir())
    assert len(runs) >= 33, "the study's runs are committed under docs/results/runs/ (make study-report)"
    root = tmp_path_factory.mktemp("study") / "docs"
    cwd = os.getcwd()
    os.chdir(REPO)  # report.json names each run by the path it was given, relative to the repository as make does
    try:
        write_report(root / "results", runs, spec=load_spec(REPO / "recipes" / "study" / "findings.yaml"),
                     doc=root / "results.md")
    finally:
        os.chdir(cwd)
    return root


def test_results_page_is_the_report_of_the_committed_runs(regenerated):
    assert (regenerated / "results.md").read_text() == (DOCS / "results.md").read_text()
    for name in ("findings.json", "report.json"):
        assert json.loads((regenerated / "results" / name).read_text()) == \
            json.loads((DOCS / "results" / name).read_text()), name


def test_results_page_figures_are_committed():
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (DOCS / "results.md").read_text())
    assert len(links) >= 2 and all((DOCS / link).is_file() for link in links), links
    assert (DOCS / "results" / "report.html").is_file()


def test_readme_results_numbers_come_from_the_results_page():
    readme = (REPO / "README.md").read_text()
    section = re.search(r"\n## Results\b.*?(?=\n## )", readme, flags=re.S)
    assert section, "README has a '## Results' section"
    assert "docs/results.md" in section.group(0)
    numbers = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", section.group(0))
    assert len(numbers) >= 6, numbers  # each finding stated with its numbers
    page = (DOCS / "results.md").read_text()
    missing = [n for n in numbers if not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", page)]
    assert not missing, f"README results numbers not in docs/results.md: {missing}"
