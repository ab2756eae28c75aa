"""roli export: timm state dicts (LoRA merged) that timm loads, safetensors, peft adapter folders, and sidecars."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from roli.cli.main import main
from roli.training.pipeline import run
from roli.transfer.state import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(fast_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_runs")
    for method in ("lora", "adapter"):
        run(fast_cfg([f"transfer.name={method}", "train.epochs=1"]), out=out, name=method)
    return out


def _x():
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_timm_export_of_a_lora_run_loads_in_timm_with_lora_merged(runs, tmp_path, capsys):
    out = tmp_path / "lora_timm.pth"
    assert main(["export", str(runs / "lora"), str(out), "--format", "timm"]) == 0
    side = json.loads((tmp_path / "lora_timm.pth.json").read_text())
    assert side["arch"] == "vit_tiny_28" and side["method"] == "lora" and side["threat"]["eps"] == 0.1
    import roli.backbones  # noqa: F401  (registers vit_tiny_28 in timm)

    net = timm.create_model(side["arch"], num_classes=side["num_classes"], checkpoint_path=str(out)).eval()
    ours, _ = load_model(str(runs / "lora" / "best.pt"))
    x = _x()
    mean, std = torch.tensor(side["mean"]).view(1, -1, 1, 1), torch.tensor(side["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net((x - mean) / std), ours(x), atol=1e-5, rtol=1e-5)  # merged == unmerged
    assert not any("lora" in k for k in torch.load(out, weights_only=True))


def test_adapters_cannot_be_a_timm_state_dict_but_export_as_safetensors(runs, tmp_path, capsys):
    assert main(["export", str(runs / "adapter"), str(tmp_path / "a.pth"), "--format", "timm"]) == 2
    err = capsys.readouterr().err
    assert "adapter adds modules" in err and "--format safetensors" in err and not (tmp_path / "a.pth").exists()
    out = tmp_path / "a.safetensors"
    assert main(["export", str(runs / "adapter"), str(out), "--format", "safetensors"]) == 0
    from safetensors.torch import load_file

    state = load_file(str(out))
    ours, _ = load_model(str(runs / "adapter" / "best.pt"))
    assert state.keys() == ours.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())
    side = json.loads((tmp_path / "a.safetensors.json").read_text())
    assert side["format"] == "safetensors" and side["test"]["n"] > 0 and side["mean"] and side["input_size"] is None


def test_export_never_overwrites_the_sidecar_either(runs, tmp_path):
    (tmp_path / "x.pth.json").write_text("mine")
    assert main(["export", str(runs / "lora"), str(tmp_path / "x.pth"), "--format", "timm"]) == 2
    assert (tmp_path / "x.pth.json").read_text() == "mine" and not (tmp_path / "x.pth").exists()


def test_peft_export_of_a_lora_run_loads_in_peft_with_roli_logits(runs, tmp_path, capsys):
    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file

    out = tmp_path / "lora_peft"
    assert main(["export", str(runs / "lora"), str(out), "--format", "peft"]) == 0
    side = json.loads((out / "roli.json").read_text())
    assert side["format"] == "peft" and side["arch"] == "vit_tiny_28" and side["threat"]["eps"] == 0.1
    assert side["test"]["n"] > 0 and side["peft"]["r"] == 2 * side["roli_config"]["transfer"]["rank"]
    assert "PeftModel.from_pretrained" in (out / "README.md").read_text()
    trained_b = [v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert len(trained_b) == 4 and all(b.abs().sum() > 0 for b in trained_b)  # one epoch moved B off zero
    import roli.backbones  # noqa: F401  (registers vit_tiny_28 in timm)

    net = timm.create_model(side["arch"], num_classes=side["num_classes"])
    net.load_state_dict(load_file(str(out / "base_model.safetensors")))
    theirs = peft.PeftModel.from_pretrained(net, str(out)).eval()
    ours, _ = load_model(str(runs / "lora" / "best.pt"))
    x = _x()
    mean, std = torch.tensor(side["mean"]).view(1, -1, 1, 1), torch.tensor(side["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        assert (theirs((x - mean) / std) - ours(x)).abs().max() <= 1e-5


def test_peft_export_refuses_a_run_without_lora_naming_the_formats_that_apply(runs, tmp_path, capsys):
    out = tmp_path / "a_peft"
    assert main(["export", str(runs / "adapter"), str(out), "--format", "peft"]) == 2
    err = capsys.readouterr().err
    assert "holds LoRA adapters and this adapter run has none; export it as roli or safetensors" in err
    assert not out.exists() and not list(tmp_path.iterdir())
