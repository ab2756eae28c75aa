"""Inputs a backbone cannot take are one line before anything is made: `roli run` checks one forward of two training
images (check_inputs), the backbone's mean/std length and the adapter's bottleneck before its first epoch, and a run
that fails there leaves no folder behind (not even the --out it made)."""

from __future__ import annotations

from pathlib import Path

import pytest

from miniatures import write_image_folder
from roli.cli.main import main

BASE = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "mnist_lora_ranli.yaml"
SMALL = ["data.train_limit=32", "data.val_limit=8", "data.test_limit=8", "train.epochs=1"]


CASES = {
    "rgb-into-1-channel": (lambda t: ["data.name=image_folder", f"data.root={write_image_folder(t / 'rgb')}",
                                      "data.resize_size=28", "data.crop_size=28"],
                           "the data has 3 channels but vit_tiny_28_fmnist_robust takes 1"),
    "28-into-a-160-vit": (lambda t: ["backbone.name=test_vit"],
                          "test_vit cannot take the data's 1x28x28 (channels x height x width) images"),
    "input-size-3": (lambda t: ["backbone.input_size=3"], "cannot take the data's 1x28x28"),
    "input-size-huge": (lambda t: ["backbone.input_size=100000"], "cannot take the data's 1x28x28"),
    "mean-std-length": (lambda t: ["backbone.mean=[0.5,0.5,0.5]", "backbone.std=[0.5,0.5,0.5]"],
                        "backbone.mean/std have 3/3 values (config) but vit_tiny_28_fmnist_robust takes 1 channel"),
    "adapter-reduction": (lambda t: ["transfer.name=adapter", "transfer.reduction=1000"],
                          "transfer.reduction 1000 leaves no bottleneck for a block of width 128"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_impossible_input_is_one_line_and_leaves_nothing(case, tmp_path, capsys):
    sets, message = CASES[case]
    out = tmp_path / "out" / "deeper"
    assert main(["run", str(BASE), "--out", str(out), "--set", *SMALL, *sets(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "out").exists()  # --out and its parent were made by this run: gone again


def test_a_possible_input_trains(tmp_path, capsys):
    """The same check passes colour images into a colour CNN, and gray digits into a colour ViT resized inside."""
    root = write_image_folder(tmp_path / "rgb")
    assert main(["run", str(BASE), "--out", str(tmp_path / "o"), "--set", *SMALL, "backbone.name=test_resnet", "transfer.name=full_finetune",
                 "data.name=image_folder", f"data.root={root}", "data.resize_size=20", "data.crop_size=16"]) == 0
    assert main(["run", str(BASE), "--out", str(tmp_path / "o"), "--set", *SMALL, "backbone.name=test_vit",
                 "backbone.input_size=160", "run.name=vit"]) == 0
