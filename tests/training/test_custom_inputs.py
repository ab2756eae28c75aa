"""Bring your own model and data: roli.run(cfg, model=..., data=...) and the example script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.utils.data import TensorDataset

from roli.backbones.custom import from_module
from roli.config import load_config
from roli.data import DataError
from roli.data.custom import from_datasets
from roli.errors import CheckpointError
from roli.training.pipeline import run
from roli.transfer import build_transfer
from roli.transfer.base import UnsupportedBackbone
from roli.transfer.state import load_model

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int, seed: int, classes: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 12, 12, generator=g), torch.randint(0, classes, (n,), generator=g))


class WithFc(nn.Module):
    def __init__(self, out: int = 7) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(144, 16), nn.ReLU())
        self.fc = nn.Linear(16, out)

    def forward(self, x):
        return self.fc(self.body(x))


def test_heads_are_found_resized_or_attached():
    x = torch.rand(2, 1, 12, 12)
    m = from_module(WithFc(7), 3, x)
    assert m.head is m.net.module.fc and m.head.out_features == 3 and m(x).shape == (2, 3)
    assert m.head_name == "module.fc"
    feats = nn.Sequential(nn.Flatten(), nn.Linear(144, 5))  # features only: a head is attached
    m = from_module(feats, 4, x)
    assert m.head.in_features == 5 and m.head.out_features == 4 and m(x).shape == (2, 4)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10)
    m = from_module(vit, 3, torch.rand(2, 3, 32, 32))
    assert m.net is vit and m.head.out_features == 3  # a timm model is used as it is, head reset


def test_methods_that_need_transformer_layers_refuse_a_plain_module_clearly():
    m = from_module(WithFc(), 3, torch.rand(1, 1, 12, 12))
    with pytest.raises(UnsupportedBackbone, match="lora supports"):
        build_transfer(load_config(data={"transfer": {"name": "lora"}}).transfer).apply(m)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3)
    lora = build_transfer(load_config(data={"transfer": {"name": "lora"}}).transfer).apply(
        from_module(vit, 3, torch.rand(1, 3, 32, 32)))
    assert any("lora" in n for n, p in lora.named_parameters() if p.requires_grad)


def test_datasets_become_splits_with_balanced_limits_and_clear_errors():
    cfg = load_config(data={"data": {"test_limit": 30}}).data
    splits = from_datasets(_data(60, 0), _data(30, 1), _data(90, 2), config=cfg)
    assert splits.num_classes == 3 and len(splits.test) == 30
    counts = torch.bincount(torch.stack([splits.test[i][1] for i in range(30)]), minlength=3)
    assert counts.tolist() == [10, 10, 10]
    with pytest.raises(DataError, match="float C x H x W tensor in \\[0,1\\]"):
        from_datasets(TensorDataset(torch.zeros(4, 12, 12, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)),
                      _data(3, 1), _data(3, 2))
    with pytest.raises(DataError, match="labels must be in"):
        from_datasets(_data(6, 0, classes=5), _data(3, 1), _data(3, 2), num_classes=3)


def test_run_with_a_module_and_datasets_writes_the_usual_folder(fast_cfg, tmp_path):
    model = WithFc(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = fast_cfg(["train.epochs=1", "transfer.name=full_finetune", "transfer.init=roli"])
    res = run(cfg, out=tmp_path, name="mine", model=model, data=(_data(64, 0), _data(32, 1), _data(32, 2)))
    assert res["status"] == "complete" and res["test"]["n"] == 32 and res["stage1"] is not None
    assert res["config"]["backbone"]["name"] == "custom:WithFc" and res["config"]["data"]["name"] == "custom"
    assert res["backbone"]["arch"] == "custom:WithFc"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the caller's module is untouched
    assert (tmp_path / "mine" / "best.pt").is_file() and (tmp_path / "mine" / "results.json").is_file()
    with pytest.raises(CheckpointError, match="model given from Python"):
        load_model(str(tmp_path / "mine" / "best.pt"))
    again = run(cfg, out=tmp_path, name="mine2", model=model, data=(_data(64, 0), _data(32, 1), _data(32, 2)))
    assert again["stage1"]["run_dir"] == res["stage1"]["run_dir"]  # same module and data: stage 1 reused
    other = WithFc(7)
    third = run(cfg, out=tmp_path, name="mine3", model=other, data=(_data(64, 0), _data(32, 1), _data(32, 2)))
    assert third["stage1"]["run_dir"] != res["stage1"]["run_dir"]  # other weights: a stage 1 of their own


def test_the_example_script_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("example", REPO / "examples" / "own_model_and_data.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--out", str(tmp_path), "--epochs", "1"])
    assert set(results) == {"ranli", "roli"}
    for res in results.values():
        saved = json.loads((Path(res["run_dir"]) / "results.json").read_text())
        assert saved["status"] == "complete" and saved["test"]["n"] == 512
