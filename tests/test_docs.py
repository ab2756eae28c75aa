"""The Python blocks of docs/api.md run as written, in order (so the documented API cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("one_thread")
def test_api_page_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), flags=re.S)
    assert len(blocks) >= 7
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    monkeypatch.chdir(tmp_path)  # the page writes under runs/: keep it out of the repository
    namespace: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"docs/api.md block {i + 1} failed: {type(e).__name__}: {e}\n{code}")
    assert (tmp_path / "runs" / "api" / "full_roli.safetensors.json").is_file()
