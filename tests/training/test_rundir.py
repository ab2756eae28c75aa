"""roli.training.rundir: a run folder's name is a name, and every run folder lies directly inside --out."""

from __future__ import annotations

from pathlib import Path

import pytest

from roli.cli.main import main
from roli.errors import RunDirError
from roli.training.rundir import NAME_MAX, check_name, new_run_dir

BASE = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "mnist_lora_ranli.yaml"


@pytest.mark.parametrize(("name", "why"), [("", "empty"), ("  ", "empty"), ("..", ". or .."), (".", ". or .."),
                                           ("../x", "path separator"), ("a/b", "path separator"),
                                           ("a\\b", "path separator"), ("a\nb", "control character"),
                                           ("x" * (NAME_MAX + 1), "longer than"), (None, "not text"), (3, "not text")])
def test_bad_names_are_refused(name, why, tmp_path):
    with pytest.raises(RunDirError, match=why):
        check_name(name)
    with pytest.raises(RunDirError, match=why):
        new_run_dir(tmp_path / "out", name)
    assert not (tmp_path / "out").exists()  # refused before anything is made


@pytest.mark.parametrize("name", ["lora-roli-s0", "mnist_full_ranli", "résumé", "x" * NAME_MAX, "a.b"])
def test_plain_names_are_folders_inside_out(name, tmp_path):
    assert new_run_dir(tmp_path, name) == tmp_path / name
    assert new_run_dir(tmp_path, name) == tmp_path / f"{name}-2"  # never reused


def test_a_symlinked_name_that_leads_out_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunDirError, match="would not lie inside"):
        new_run_dir(tmp_path / "out", "run")
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("name", ["../../escaped", "..", ""])
def test_roli_run_name_stays_inside_out(name, tmp_path, capsys):
    recipe = tmp_path / "deep" / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text(f"base: {BASE}\n")
    assert main(["run", str(recipe), "--name", name, "--out", str(tmp_path / "deep" / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a folder name" in err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "r.yaml"]  # nothing made, in or out of --out


def test_a_recipes_run_name_is_checked_before_any_run(tmp_path, capsys):
    base = BASE
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(f"base: {base}\n")
    bad.write_text(f"base: {base}\nrun: {{name: ../x}}\n")
    assert main(["run", str(good), str(bad), "--out", str(tmp_path / "out")]) == 2  # the good one does not train
    assert "run.name '../x' is not a folder name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _copy_run(finished_run, tmp_path) -> Path:
    import shutil

    run_dir = tmp_path / "runs" / "r"
    shutil.copytree(finished_run[0], run_dir)
    return run_dir


def test_resume_with_another_recipes_config_writes_nothing(finished_run, fast_cfg, tmp_path, capsys):
    from roli.config import dump_config

    run_dir = _copy_run(finished_run, tmp_path)
    dump_config(fast_cfg(["transfer.name=linear_probe", "train.lr=0.5"]), run_dir / "config.yaml")  # swapped in
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "its config.yaml is not the one its results.json was made with" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # nothing rewritten


def test_resume_never_writes_through_a_link_out_of_the_run_folder(finished_run, tmp_path, capsys):
    run_dir = _copy_run(finished_run, tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("mine\n")
    (run_dir / "train.log").unlink()
    (run_dir / "train.log").symlink_to(target)
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "is a link to" in capsys.readouterr().err and target.read_text() == "mine\n"
