"""The `roli` command, called in-process through roli.cli.main.main (plus one real subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import roli
from roli.attacks import ATTACKS
from roli.backbones import BACKBONES
from roli.cli.main import main
from roli.config import dump_config
from roli.data import DATASETS
from roli.transfer import TRANSFER
from roli.transfer.state import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_list_prints_every_registered_name(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for registry in (BACKBONES, DATASETS, TRANSFER, ATTACKS):
        for name in registry.names():
            assert name in out, name
    assert "transfer methods:" in out and "attacks:" in out
    assert "step_size: float = 2/255" in out  # method/attack fields are listed with their defaults, eps as k/255
    fgsm = next(line for line in out.splitlines() if line.strip().startswith("fgsm*:"))
    aa = next(line for line in out.splitlines() if line.strip().startswith("autoattack:"))
    assert "loss" in fgsm and not any(k in fgsm + aa for k in ("steps", "step_size", "random_start", "eps"))
    assert "threat: norm: linf|l2 = 'linf', eps: float = 8/255" in out  # one threat model for all attacks


@pytest.fixture
def recipe(fast_cfg, tmp_path) -> Path:
    """A complete, valid tiny recipe file (1 epoch)."""
    path = tmp_path / "tiny.yaml"
    dump_config(fast_cfg(["train.epochs=1"]), path)
    return path


def _bad_key(recipe: Path) -> list[str]:
    data = yaml.safe_load(recipe.read_text())
    data["train"]["learning_rate"] = 0.1
    recipe.write_text(yaml.safe_dump(data))
    return [str(recipe)]


@pytest.mark.parametrize("case, args, expected", [
    ("unknown key", _bad_key, ["train", "learning_rate", "valid keys"]),
    ("bad value", lambda r: [str(r), "--set", "train.optimizer=adam"], ["train.optimizer", "adam", "adamw"]),
    ("bad number", lambda r: [str(r), "--set", "threat.eps=-1"], ["eps must be >= 0"]),
    ("missing file", lambda r: [str(r.with_name("nope.yaml"))], ["nope.yaml", "not found"]),
])
def test_run_with_a_bad_recipe_exits_2_and_names_the_key(recipe, tmp_path, capsys, case, args, expected):
    out = tmp_path / "runs"
    assert main(["run", *args(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("roli run: error:")
    for word in expected:
        assert word in err, (case, word, err)
    assert not out.exists() or not any(out.iterdir())  # nothing trained


def test_run_end_to_end_writes_the_run_and_the_report(recipe, tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["run", str(recipe), "--set", "train.epochs=2", "attack.steps=1", "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    run_dir = out / "tiny"  # named after the recipe file
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "complete" and res["recipe"] == str(recipe)
    assert len(res["history"]) == 2 and res["config"]["attack"]["steps"] == 1  # --set applied
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()
    report = (out / "report.md").read_text()
    assert "| tiny |" in report and f"{res['test']['clean']:.2f}" in report
    assert "# roli report" in stdout and f"report: {out / 'report.md'}" in stdout


def test_run_needs_a_recipe(capsys):
    assert main(["run"]) == 2  # a usage error is bad input: exit 2, one line
    assert "roli run: error: give at least one recipe" in capsys.readouterr().err


def test_eval_prints_json(finished_run, tmp_path, capsys):
    run_dir, res, cfg = finished_run
    output = tmp_path / "eval.json"
    rc = main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--limit", str(cfg.data.test_limit),
               "--output", str(output)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text())
    assert set(printed["results"]) == {"clean", "pgd"}
    assert printed["results"]["clean"]["acc"] == res["test"]["clean"]
    assert printed["results"]["clean"]["n"] == 32
    assert printed["threat"]["eps"] == 0.1 and printed["checkpoint"] == str(run_dir / "best.pt")


def test_eval_writes_beside_the_checkpoint_without_overwriting(finished_run, tmp_path, capsys):
    run_dir, _, _ = finished_run
    ckpt = tmp_path / "best.pt"
    shutil.copy(run_dir / "best.pt", ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--limit", "8", "--eps", "8/255"]) == 0
    first = tmp_path / "eval-synthetic-test.json"
    assert json.loads(first.read_text())["threat"]["eps"] == pytest.approx(8 / 255)
    before = first.read_bytes()
    assert main(["eval", "--checkpoint", str(ckpt), "--limit", "8"]) == 0
    assert first.read_bytes() == before
    assert len(list(tmp_path.glob("eval-synthetic-test*.json"))) == 2


def test_eval_accepts_a_decimal_eps(finished_run, tmp_path, capsys):
    run_dir, _, _ = finished_run
    rc = main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--limit", "8", "--eps", "0.05",
               "--step-size", "0.01", "--output", str(tmp_path / "e.json")])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "e.json").read_text())["threat"]["eps"] == 0.05


def test_eval_of_a_non_roli_file_exits_2(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, path)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    assert "not a roli checkpoint" in capsys.readouterr().err


def test_export_writes_a_loadable_file_and_refuses_to_overwrite(finished_run, tmp_path, capsys):
    run_dir, res, _ = finished_run
    target = tmp_path / "exported.pt"
    assert main(["export", str(run_dir), str(target)]) == 0
    assert f"epoch {res['selected_epoch']}" in capsys.readouterr().out
    model, _ = load_model(str(target))
    best, _ = load_model(str(run_dir / "best.pt"))
    assert all(torch.equal(v, best.state_dict()[k]) for k, v in model.state_dict().items())

    before = target.read_bytes()
    assert main(["export", str(run_dir), str(target)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and str(target) in err
    assert target.read_bytes() == before

    other = tmp_path / "mine.pt"
    other.write_bytes(b"precious")
    assert main(["export", str(run_dir), str(other)]) == 2
    assert other.read_bytes() == b"precious"


def test_report_command(finished_run, tmp_path, capsys):
    run_dir, _, _ = finished_run
    assert main(["report", str(run_dir.parent), "--out", str(tmp_path)]) == 0
    assert "| shared |" in capsys.readouterr().out
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report_scatter.png").is_file()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "roli report: error: no results.json under" in capsys.readouterr().err


def test_run_resume_of_a_finished_run(finished_run, tmp_path, capsys):
    run_dir, res, _ = finished_run
    copy = tmp_path / "shared"
    shutil.copytree(run_dir, copy)
    assert main(["run", "--resume", str(copy)]) == 0, capsys.readouterr().err
    again = json.loads((copy / "results.json").read_text())
    assert again["history"] == res["history"] and again["test"]["clean"] == res["test"]["clean"]


def test_roli_help_subprocess():
    proc = subprocess.run([sys.executable, "-m", "roli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for cmd in ("run", "eval", "list", "report", "export"):
        assert cmd in proc.stdout


# --------------------------------------------------------------------------- evaluation suites


def eval_suite(run_dir, tmp_path, capsys, suite: str) -> dict:
    """`roli eval --suite SUITE` on 16 test images of the run; returns the JSON it wrote."""
    out = tmp_path / f"{suite}.json"
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--suite", suite, "--limit", "16",
                 "--output", str(out)]) == 0, capsys.readouterr().err
    return json.loads(out.read_text())


def test_eval_quick_suite_records_settings_versions_and_checks(finished_run, tmp_path, capsys):
    run_dir, _, cfg = finished_run
    data = eval_suite(run_dir, tmp_path, capsys, "quick")
    assert data["suite"] == "quick" and set(data["results"]) == {"clean", "pgd"}
    pgd = data["attacks"]["pgd"]
    assert (pgd["name"], pgd["steps"]) == ("pgd", 10) and "eps" not in pgd  # PGD-10
    assert data["threat"] == {"norm": "linf", "eps": cfg.threat.eps} and data["device"].startswith("cpu")
    assert pgd["step_size"] == pytest.approx(cfg.attack.step_size)  # the run's step/eps ratio at the run's eps
    for r in data["results"].values():
        assert r["n"] == 16 and r["seconds"] >= 0 and r["images_per_s"] > 0
    assert [c["name"] for c in data["checks"]] == ["input_range", "logits", "deterministic", "gradients",
                                                    "ordering"]
    assert all({"name", "passed", "message", "details"} <= set(c) for c in data["checks"])
    assert {"roli", "torch", "timm", "numpy", "pyautoattack"} <= set(data["versions"])


def test_eval_full_suite_with_a_custom_autoattack(finished_run, tmp_path, capsys):
    run_dir, _, cfg = finished_run
    ckpt = tmp_path / "best.pt"
    shutil.copy(run_dir / "best.pt", ckpt)
    args = ["eval", "--checkpoint", str(ckpt), "--suite", "full", "--limit", "8", "--aa", "version=custom",
            "attacks=[apgd-ce,apgd-t]", "n_iter=5", "apgd_restarts=1"]
    assert main(args) == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "eval-synthetic-test-full.json").read_text())
    assert list(data["results"]) == ["clean", "fgsm", "pgd", "autoattack"]
    aa, settings = data["results"]["autoattack"], data["attacks"]["autoattack"]
    assert (settings["version"], settings["attacks"], settings["n_iter"]) == ("custom", ["apgd-ce", "apgd-t"], 5)
    assert settings["eps"] == cfg.threat.eps and settings["seed"] == cfg.run.seed and settings["norm"] == "linf"
    assert list(aa["after"]) == ["clean", "apgd-ce", "apgd-t"] and aa["after"]["clean"] == data["results"][
        "clean"]["acc"]
    assert aa["acc"] == aa["after"]["apgd-t"] and aa["n"] == 8 and aa["images_per_s"] > 0
    state = list(tmp_path.glob("autoattack-synthetic-test-*.state.json"))
    assert [str(p) for p in state] == [aa["state"]]
    assert "ordering" in [c["name"] for c in data["checks"]]

    # the finished state is reused: the same AutoAttack answer, nothing attacked again
    assert main(args) == 0
    again = [p for p in tmp_path.glob("eval-synthetic-test-full*.json") if p.name != "eval-synthetic-test-full.json"]
    assert len(again) == 1  # a new file, the first one is kept
    second = json.loads(again[0].read_text())["results"]["autoattack"]
    assert second["resumed"] and second["after"] == aa["after"]


def test_eval_sweep_suite(finished_run, tmp_path, capsys):
    run_dir, _, cfg = finished_run
    data = eval_suite(run_dir, tmp_path, capsys, "sweep")
    eps = cfg.threat.eps
    assert [p["eps"] for p in data["sweep"]] == pytest.approx([0, eps / 4, eps / 2, eps, 2 * eps, 0.5])
    assert data["sweep"][0]["acc"] == data["results"]["clean"]["acc"]
    pts = [(p["eps"], p["acc"]) for p in data["sweep"] if p["eps"] <= eps]  # the trapezoid mean over [0, eps]
    area = sum((e1 - e0) * (a0 + a1) / 2 for (e0, a0), (e1, a1) in zip(pts, pts[1:]))
    assert data["expected_robustness"] == pytest.approx(area / eps)
    names = [c["name"] for c in data["checks"]]
    assert {"eps_monotone", "large_eps", "eps_zero_clean"} <= set(names)
    assert next(c for c in data["checks"] if c["name"] == "eps_zero_clean")["passed"]


@pytest.mark.parametrize("args, expected", [
    (["--aa", "version=custom"], "--suite full"),
    (["--suite", "full", "--aa", "versoin=custom"], "valid keys"),
    (["--suite", "full", "--aa", "version=custom"], "give `attacks`"),
])
def test_eval_bad_autoattack_options_exit_2(finished_run, capsys, args, expected):
    run_dir, _, _ = finished_run
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--limit", "4", *args]) == 2
    assert expected in capsys.readouterr().err


def test_eval_device_cuda_without_a_gpu_is_a_one_line_error(finished_run, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    run_dir, _, _ = finished_run
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--device", "cuda", "--limit", "4"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is available; use auto or cpu" in err and "Traceback" not in err


def test_eval_overrides_the_threat_model_and_refuses_fields_the_attack_lacks(finished_run, tmp_path, capsys):
    run_dir, _, cfg = finished_run
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--norm", "l2", "--eps", "0.5", "--limit", "8",
                 "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["threat"] == {"norm": "l2", "eps": 0.5} and data["attack"]["steps"] == cfg.eval.attack.steps
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--attack", "fgsm", "--steps", "5"]) == 2
    assert "unknown key(s) ['steps']" in capsys.readouterr().err


def test_version_and_a_recipe_after_set(recipe, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"roli {roli.__version__}"
    # argparse would hand the recipe to --set; it must still run it, with the override applied
    assert main(["run", "--set", "train.epochs=1", str(recipe), "--out", str(tmp_path / "o")]) == 0
    res = json.loads(next((tmp_path / "o").glob("*/results.json")).read_text())
    assert res["config"]["train"]["epochs"] == 1 and len(res["history"]) == 1


def test_eval_prints_a_summary_line(finished_run, tmp_path, capsys):
    run_dir, _, _ = finished_run
    assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--limit", "8", "--output",
                 str(tmp_path / "e.json")]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("best.pt on synthetic test (n=8), linf eps 0.1: clean ") and "pgd " in last


def test_list_shows_budgets_as_fractions_and_other_numbers_as_themselves(capsys):
    """eps and PGD steps as k/255; LoRA's alpha = 16 as 16 (it once printed 4080/255)."""
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lora = next(line for line in out.splitlines() if line.strip().startswith("lora"))
    assert "alpha: float = 16," in lora and "/255" not in lora
    assert "step_size: float = 2/255" in out and "eps: float = 8/255" in out


def test_help_is_fast():
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "roli", "--help"], check=True, capture_output=True)
    assert time.perf_counter() - t0 < 3.0  # lazy imports: no torch/timm for --help (<1 s on an idle machine)


@pytest.mark.parametrize("argv", [["eval", "--checkpoint", "x.pt", "--limit", "0"],
                                  ["eval", "--checkpoint", "x.pt", "--limit", "-3"],
                                  ["eval", "--checkpoint", "x.pt", "--steps", "0"],
                                  ["sweep", "g.yaml", "--nproc", "0"], ["sweep", "g.yaml", "--stop-after", "nan"],
                                  ["tune", "r.yaml", "--lr", "1e-3", "--epochs", "0"]])
def test_impossible_counts_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "must be" in capsys.readouterr().err


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["run", "a.yaml", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["roli run: error: give either recipes or --resume DIR, not both"]
