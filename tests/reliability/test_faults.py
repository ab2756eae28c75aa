"""Resource and numerical faults (docs/reliability.md, guarantees 2-4): a full disk, a refused write, CUDA out of
memory, a failing DataLoader worker, NaN losses, and runs that fail before training or runs a sweep must not mistake
for resumable work. Each fault is injected by monkeypatching one function; the CLI must print one line (no
traceback), keep every earlier file valid, and a later resume must reach the uninterrupted result."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY
from miniatures import write_image_folder
from reliability.helpers import assert_same_run, cli, reference_run, snapshot, temp_files, write_recipe
from roli.backbones.normalize import Classifier
from roli.checkpoints import load_file
from roli.config import dump_config
from roli.errors import OutOfMemory, RoliError, TrainingFailed, WriteError
from roli.files import atomic_write_text, discard_unstarted, read_json, write_atomic
from roli.sweep.cells import cell_status
from roli.sweep.grid import expand, load_grid

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["train.epochs=2", "data.train_limit=96", "threat.eps=0.01", "attack.step_size=0.005",
       "eval.attack.step_size=0.005"]  # 2 epochs x 3 steps; learns (see test_kill_resume)


@pytest.fixture(scope="module")
def recipe(fast_cfg, tmp_path_factory) -> Path:
    return write_recipe(fast_cfg(RUN), tmp_path_factory.mktemp("recipe"), "r.yaml")


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    """The uninterrupted run (same recipe, same seed), through the same CLI."""
    return reference_run(recipe, tmp_path_factory.mktemp("reference"))


def one_line(err: str) -> str:
    """The CLI's error output is exactly one line, without a traceback."""
    lines = [line for line in err.splitlines() if "error:" in line or "Traceback" in line or line.startswith(" ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- disk full, permission denied


def test_disk_full_writing_a_checkpoint_keeps_the_previous_one(recipe, reference, tmp_path, capsys, monkeypatch):
    real_save, calls = torch.save, []

    def disk_full_on_second_checkpoint(obj, f, *args, **kwargs):
        if ".checkpoint.pt." in str(f):
            calls.append(f)
            if len(calls) == 2:  # epoch 2's checkpoint: half written, then the disk is full
                Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_on_second_checkpoint)
    out = tmp_path / "runs"
    rc, err = cli(["run", recipe, "--out", out], capsys)
    line = one_line(err)
    assert rc == 2 and "disk is full" in line and str(out / "r" / "checkpoint.pt") in line and "unchanged" in line
    run_dir = out / "r"
    assert load_file(run_dir / "checkpoint.pt")["epoch"] == 1  # the previous checkpoint is valid
    assert not temp_files(run_dir)  # the half-written temp file is removed
    assert read_json(run_dir / "results.json")["status"] == "running"  # resumable, not failed

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    rc, err = cli(["run", "--resume", run_dir], capsys)
    assert rc == 0, err
    assert_same_run(reference, run_dir)


def test_permission_denied_writing_results_keeps_the_run_resumable(recipe, reference, tmp_path, capsys,
                                                                   monkeypatch):
    real_replace, calls = os.replace, []

    def refuse_final_results(src, dst, *args, **kwargs):
        if str(dst).endswith("results.json"):
            calls.append(dst)
            if len(calls) == 2:  # the final "complete" results.json
                raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refuse_final_results)
    out = tmp_path / "runs"
    rc, err = cli(["run", recipe, "--out", out], capsys)
    line = one_line(err)
    assert rc == 2 and "permission denied" in line and "results.json" in line
    assert read_json(out / "r" / "results.json")["status"] == "running"  # the previous results.json is intact
    monkeypatch.setattr(os, "replace", real_replace)
    rc, err = cli(["run", "--resume", out / "r"], capsys)
    assert rc == 0, err
    assert_same_run(reference, out / "r")


def test_write_atomic_failure_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def half_then_full(tmp: Path) -> None:
        tmp.write_text("ne")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError) as e:
        write_atomic(path, half_then_full)
    assert isinstance(e.value, OSError) and isinstance(e.value, RoliError) and e.value.errno == errno.ENOSPC
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_write_atomic_removes_temp_files_a_killed_writer_left(tmp_path):
    """A killed writer's temp file goes (its pid no longer runs, or it has no pid and is over an hour old); a live
    writer's stays (two sweep shards write one report.md at once)."""
    path = tmp_path / "f.txt"
    gone = multiprocessing.get_context("spawn").Process(target=int)
    gone.start()
    gone.join()
    (tmp_path / f".f.txt.{gone.pid}-abc123.tmp").write_text("half")  # a dead writer
    old = tmp_path / ".f.txt.abc123.tmp"  # a temp name from before pids were in them
    old.write_text("half")
    os.utime(old, (0, 0))
    live = f".f.txt.{os.getpid()}-xyz.tmp"
    (tmp_path / live).write_text("being written")
    (tmp_path / ".f.txt.fresh.tmp").write_text("being written")
    (tmp_path / ".other.txt.abc123.tmp").write_text("not mine")
    atomic_write_text(path, "new")
    assert sorted(os.listdir(tmp_path)) == sorted([".f.txt.fresh.tmp", live, ".other.txt.abc123.tmp", "f.txt"])
    assert path.read_text() == "new"


def _write_many(path: str, text: str) -> None:
    for _ in range(200):
        atomic_write_text(path, text)


def test_two_processes_write_one_file_at_once(tmp_path):
    """Two writers of one file (two sweep shards ending together) never delete each other's temp file."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path / "report.md"), t)) for t in ("a" * 5000, "b" * 5000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "report.md").read_text() in ("a" * 5000, "b" * 5000) and os.listdir(tmp_path) == ["report.md"]


def test_discard_unstarted_removes_only_what_roli_made_before_training(tmp_path):
    for name, files, removed in (("fresh", ["config.yaml", "train.log", ".config.yaml.x.tmp"], True),
                                 ("empty", [], True), ("trained", ["config.yaml", "checkpoint.pt"], False),
                                 ("user", ["config.yaml", "notes.txt"], False)):
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_text("x")
        assert discard_unstarted(d) is removed and d.exists() is not removed, name


# --------------------------------------------------------------------------- out of memory


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)")


@pytest.mark.parametrize("where, target, stage, batch", [
    ("training step", "torch.optim.AdamW.step", "training (epoch 1)", "data.batch_size=32"),
    ("validation", "roli.training.trainer.evaluate", "validation (epoch 1)", "data.eval_batch_size=32"),
    ("test evaluation", "roli.training.pipeline.evaluate", "test evaluation", "data.eval_batch_size=32"),
])
def test_cuda_out_of_memory_names_the_batch_size(recipe, tmp_path, capsys, monkeypatch, where, target, stage, batch):
    monkeypatch.setattr(target, _oom)
    rc, err = cli(["run", recipe, "--out", tmp_path], capsys)
    line = one_line(err)
    assert rc == 2 and f"out of memory during {stage} with {batch}" in line, line
    assert "Tried to allocate 2.00 GiB" in line and f"--set {batch.split('=')[0]}=16" in line  # the hint
    assert read_json(tmp_path / "r" / "results.json")["status"] == "running"  # resumable with a smaller batch? no:
    # the batch size is part of the config; the run stays resumable as it is (e.g. on a larger GPU)


def test_out_of_memory_in_roli_eval(reference, capsys, monkeypatch):
    monkeypatch.setattr("roli.evaluation.checkpoint.run_suite", _oom)
    rc, err = cli(["eval", "--checkpoint", reference / "best.pt", "--limit", "8"], capsys)
    line = one_line(err)
    assert rc == 2 and "out of memory during evaluation with data.eval_batch_size=32" in line
    assert "--device cpu" in line
    assert issubclass(OutOfMemory, RuntimeError) and issubclass(OutOfMemory, RoliError)


# --------------------------------------------------------------------------- a failing DataLoader worker


def test_a_failing_dataloader_worker_names_the_file(tmp_path, capsys, monkeypatch):
    root = write_image_folder(tmp_path / "images", per_class=4)
    for jpg in (root / "train").rglob("*.jpg"):
        jpg.write_bytes(b"\xff\xd8 not a jpeg any more")  # broken after roli checked it (the check is skipped here)
    monkeypatch.setattr("roli.data.folder.check_images", lambda *args, **kwargs: {})
    monkeypatch.setattr("roli.training.pipeline.check_inputs", lambda *args, **kwargs: None)  # it reads 2 images
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(yaml.safe_dump({
        "backbone": {"name": "test_resnet"}, "transfer": {"name": "linear_probe"},
        "data": {"name": "image_folder", "root": str(root), "resize_size": 20, "crop_size": 16, "batch_size": 4,
                 "num_workers": 1},
        "threat": {"eps": 0.1}, "attack": {"steps": 1, "step_size": 0.1}, "train": {"epochs": 1},
        "run": {"threads": 1}}))
    rc, err = cli(["run", recipe, "--out", tmp_path / "runs"], capsys)
    line = one_line(err)
    assert rc == 2 and "cannot read the image" in line and "in a DataLoader worker" in line
    assert str(root / "train") in line and ".jpg" in line  # the failing file, by name
    assert not multiprocessing.active_children()  # the worker is stopped at once, not when garbage-collected


# --------------------------------------------------------------------------- non-finite losses


def _rig_nan(monkeypatch, poisoned: set[int]) -> None:
    """The model returns NaN logits on the listed training forward passes (1-based; train mode only, so attacks
    and validation are unaffected)."""
    real_forward, calls = Classifier.forward, [0]

    def forward(self, x):
        out = real_forward(self, x)
        if self.training:
            calls[0] += 1
            if calls[0] in poisoned:
                return out * float("nan")
        return out

    monkeypatch.setattr(Classifier, "forward", forward)


def test_nan_stops_by_default_with_epoch_batch_and_hint(recipe, tmp_path, capsys, monkeypatch):
    _rig_nan(monkeypatch, {2})
    rc, err = cli(["run", recipe, "--out", tmp_path], capsys)
    line = one_line(err)
    assert rc == 2 and "loss is nan at epoch 1, batch 2 of 3" in line
    assert "train.on_nonfinite: skip" in line and "train.grad_clip" in line  # the hints
    res = read_json(tmp_path / "r" / "results.json")
    assert res["status"] == "failed" and "epoch 1, batch 2" in res["error"]  # failed: a sweep does not resume it
    assert cell_status(tmp_path, type("Cell", (), {"name": "r"})()) == "failed"


def test_nan_batches_are_skipped_and_counted(recipe, tmp_path, capsys, caplog, monkeypatch):
    _rig_nan(monkeypatch, {2, 5})
    rc, err = cli(["run", recipe, "--out", tmp_path, "--set", "train.on_nonfinite=skip",
                   "train.max_skipped_batches=2"], capsys)
    assert rc == 0, err
    res = read_json(tmp_path / "r" / "results.json")
    assert [h["skipped_batches"] for h in res["history"]] == [1, 1]
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "r" / "best.pt")["model"].values())
    assert "loss is nan at epoch 2, batch 2 of 3: batch skipped (train.on_nonfinite: skip)" in caplog.text


def test_nan_skips_stop_after_max_skipped_batches(recipe, tmp_path, capsys, monkeypatch):
    _rig_nan(monkeypatch, {2, 4, 5})
    rc, err = cli(["run", recipe, "--out", tmp_path, "--set", "train.on_nonfinite=skip",
                   "train.max_skipped_batches=2"], capsys)
    line = one_line(err)
    assert rc == 2 and "epoch 2, batch 2 of 3" in line and "train.max_skipped_batches" in line
    assert load_file(tmp_path / "r" / "checkpoint.pt")["epoch"] == 1  # the last good checkpoint
    assert read_json(tmp_path / "r" / "results.json")["status"] == "failed"
    assert issubclass(TrainingFailed, RoliError)


# --------------------------------------------------------------------------- nothing half-made


def test_unsupported_method_is_one_line_and_leaves_no_run_folder(fast_cfg, tmp_path, capsys):
    recipe = tmp_path / "vpt_resnet.yaml"
    dump_config(fast_cfg(["backbone.name=test_resnet", "transfer.name=vpt_deep"]), recipe)
    out = tmp_path / "runs"
    rc, err = cli(["run", recipe, "--out", out], capsys)
    line = one_line(err)
    assert rc == 2 and "vpt_deep" in line and "VisionTransformer" in line and "Methods that apply" in line
    assert not out.exists()  # no half-made run folder, and not the --out this run made either


def test_sweep_never_resumes_a_cell_that_failed_before_training(fast_cfg, tmp_path, capsys):
    base = {**TINY, "data": {**TINY["data"], "train_limit": 32, "val_limit": 16, "test_limit": 16},
            "train": {"epochs": 1, "warmup_epochs": 0.0}, "run": {"threads": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "vpt_deep.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "backbone": {"name": "test_resnet"},
                                                            "transfer": {"name": "vpt_deep"}}))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"recipe": "{method}.yaml", "axes": {"method": ["vpt_deep"]},
                                    "out": str(tmp_path / "out")}))
    for _ in range(2):  # the second sweep tries again from scratch: it does not "resume" a half-made folder
        rc, err = cli(["sweep", grid], capsys)
        assert rc == 1 and "failed: vpt_deep: UnsupportedBackbone" in err and "resuming" not in err
        assert cell_status(tmp_path / "out", expand(load_grid(grid))[0]) == "todo"
        assert not (tmp_path / "out" / "vpt_deep").exists()


def test_sweep_cleans_a_folder_killed_as_it_was_made_and_refuses_a_foreign_one(fast_cfg, tmp_path, capsys):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "train_limit": 32,
                                                                          "val_limit": 16, "test_limit": 16},
                                                        "train": {"epochs": 1, "warmup_epochs": 0.0},
                                                        "transfer": {"name": "linear_probe"},
                                                        "run": {"threads": 1}}))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"recipe": "{r}.yaml", "axes": {"r": ["base"]}, "out": str(tmp_path / "out")}))
    half = tmp_path / "out" / "base"
    half.mkdir(parents=True)
    (half / ".config.yaml.k1ll3d.tmp").write_text("backbone: {na")  # a kill while config.yaml was written
    rc, err = cli(["sweep", grid], capsys)
    assert rc == 0, err
    assert read_json(half / "results.json")["status"] == "complete" and not (tmp_path / "out" / "base-2").exists()

    foreign = tmp_path / "out2" / "base"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    rc, err = cli(["sweep", grid, "--out", tmp_path / "out2"], capsys)
    assert rc == 1 and "is not a roli run" in err and (foreign / "notes.txt").read_text() == "mine"


def test_a_failing_report_keeps_the_previous_report(reference, tmp_path, capsys):
    out = tmp_path / "report"
    rc, err = cli(["report", reference.parent, "--out", out], capsys)
    assert rc == 0, err
    before = snapshot(out)
    bad = tmp_path / "runs" / "bad"
    bad.mkdir(parents=True)
    res = read_json(reference / "results.json")
    del res["config"]["backbone"]
    (bad / "results.json").write_text(json.dumps(res))
    rc, err = cli(["report", reference.parent, tmp_path / "runs", "--out", out], capsys)
    line = one_line(err)
    assert rc == 2 and str(bad / "results.json") in line and "'backbone' is missing" in line
    assert snapshot(out) == before  # no half-made report, the old one intact


def test_eval_output_is_never_overwritten_and_checked_before_evaluating(reference, tmp_path, capsys, monkeypatch):
    target = tmp_path / "eval.json"
    target.write_text("earlier result")
    monkeypatch.setattr("roli.evaluation.checkpoint.run_suite", _oom)  # would fail if it evaluated
    rc, err = cli(["eval", "--checkpoint", reference / "best.pt", "--output", target], capsys)
    assert rc == 2 and "exists" in one_line(err) and target.read_text() == "earlier result"


def test_an_unexpected_error_keeps_its_traceback_and_says_it_is_a_bug(recipe, tmp_path, monkeypatch):
    from roli.cli.main import main
    from roli.version import __version__

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("roli.training.pipeline.build_data", bug)
    with pytest.raises(ZeroDivisionError) as e:
        main(["run", str(recipe), "--out", str(tmp_path)])
    assert any(f"bug in roli {__version__}" in note and "report it" in note for note in e.value.__notes__)


def test_resuming_a_complete_run_rewrites_nothing(reference, tmp_path, capsys):
    copy = tmp_path / "r"
    import shutil

    shutil.copytree(reference, copy)
    before = snapshot(copy)
    rc, err = cli(["run", "--resume", copy], capsys)
    assert rc == 0, err
    assert snapshot(copy) == before  # not retrained or re-tested (a lean run folder has no checkpoint.pt to resume)


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 MiB tmpfs (needs root and mount rights, as on the project's machines and CI), unmounted after."""
    import shutil
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC test above covers the logic")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte with one file; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: a write that does not fit fails here, not at close
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def test_a_really_full_disk_is_one_line_and_the_run_resumes_identically(recipe, reference, small_disk, capsys,
                                                                         monkeypatch):
    """Not simulated: epoch 2's checkpoint meets a file system with no byte left (torch.save raises RuntimeError
    there, not OSError); roli says so in one line, keeps epoch 1's checkpoint, and resumes to the same result."""
    real_save, calls, filler = torch.save, [], []

    def fill_before_second_checkpoint(obj, f, *args, **kwargs):
        if ".checkpoint.pt." in str(f):
            calls.append(f)
            if len(calls) == 2:
                filler.append(_fill(small_disk))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_before_second_checkpoint)
    out = small_disk / "runs"
    rc, err = cli(["run", recipe, "--out", out], capsys)
    assert filler, f"the run never reached its second checkpoint: {err}"
    line = one_line(err)
    assert rc == 2 and "the disk is full" in line and "checkpoint.pt" in line and "unchanged" in line
    run_dir = out / "r"
    assert load_file(run_dir / "checkpoint.pt")["epoch"] == 1
    assert not temp_files(run_dir)
    filler[0].unlink()  # space freed
    monkeypatch.setattr(torch, "save", real_save)
    rc, err = cli(["run", "--resume", run_dir], capsys)
    assert rc == 0, err
    assert_same_run(reference, run_dir)
