"""`--format peft`: roli's LoRA leaves roli as a peft adapter that peft loads onto the bare timm network with the same
logits (the run-folder CLI path and its refusals: test_export.py)."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from roli.backbones.normalize import Classifier, PixelNormalize
from roli.transfer import build_transfer, peft_export
from roli.transfer.lora import LORA_MODULES, LoraConfig
from roli.transfer.peft_export import ExportError, adapter, patterns, write_peft
from tiny_models import tiny_backbone

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]


def lora_model(family: str = "vit", **fields):
    """A tiny backbone with roli LoRA whose B matrices and head are random (at init B = 0: no test could fail)."""
    base = strided_resnet() if family == "resnet_strided" else tiny_backbone(family)
    model = build_transfer(LoraConfig(**{"rank": 2, "alpha": 3.0, **fields})).apply(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.net.named_parameters():
            if "lora_B" in name or (p.requires_grad and name.startswith(model.head_name)):
                p.normal_(0, 0.1, generator=g)
            elif name.endswith("gamma"):  # ConvNeXt's layer scale starts at 1e-6: its MLPs' LoRA would not show
                p.fill_(1.0)
    return model.eval()


def side(model, arch: str) -> dict:
    norm = model.normalize
    return {"arch": arch, "num_classes": 4, "method": "lora", "threat": {"norm": "linf", "eps": 0.1}, "test": None,
            "mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist(), "input_size": norm.input_size}


def peft_model(out: Path, net):
    """What a peft user does: the timm net with the exported base weights, then the adapter."""
    net.load_state_dict(load_file(str(out / "base_model.safetensors")))
    return peft.PeftModel.from_pretrained(net, str(out)).eval()


def strided_resnet(seed: int = 0) -> Classifier:
    """timm's test_resnet with 1x1 stride-2 shortcut convs (tiny_backbone's pools first, then a stride-1 conv)."""
    torch.manual_seed(seed)
    return Classifier(timm.create_model("test_resnet", num_classes=4, avg_down=False),
                      PixelNormalize((0.5,), (0.25,), in_chans=3))


FRESH = {"vit": lambda: timm.create_model("vit_tiny_28", num_classes=4),
         "resnet": lambda: timm.create_model("test_resnet", num_classes=4),
         "resnet_strided": lambda: timm.create_model("test_resnet", num_classes=4, avg_down=False),
         "convnext": lambda: timm.create_model("test_convnext", num_classes=4),
         "swin": lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=32, embed_dim=16, depths=(2, 2),
                                           num_heads=(1, 2), window_size=4, num_classes=4)}
CASES = [  # family, targets (None: the backbone's default), r, rank_pattern in adapter_config.json
    ("vit", ("q", "v"), 4, {}), ("vit", ("k",), 2, {}), ("swin", ("q", "v"), 4, {}),
    ("vit", ("q", "v", "proj", "fc1", "fc2"), 4, {"proj": 2, "fc1": 2, "fc2": 2}),  # 2r on the fused qkv, r elsewhere
    ("resnet", None, 2, {}), ("resnet_strided", None, 2, {}),  # 1x1 convs (stride 2 too): peft's Conv2d LoRA
    ("convnext", None, 2, {}),  # the MLPs' fc1, fc2
]


@pytest.mark.parametrize("family,targets,r,ranks", CASES)
def test_peft_loads_the_adapter_onto_timm_with_roli_logits(family, targets, r, ranks, tmp_path):
    model = lora_model(family, targets=targets)
    out = tmp_path / "adapter"
    paths = write_peft(model, out, side(model, family))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in paths} == {0o666 & ~umask} and out.stat().st_mode & 0o777 == 0o777 & ~umask
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == r and config["lora_alpha"] == pytest.approx(1.5 * r) and config["rank_pattern"] == ranks
    assert config["alpha_pattern"] == {k: 1.5 * v for k, v in ranks.items()}
    assert config["peft_type"] == "LORA" and config["task_type"] is None and config["lora_dropout"] == 0.1
    assert config["modules_to_save"] == [model.head_name]
    loaded = peft_model(out, FRESH[family]())
    wrapped = [n for n, m in loaded.base_model.model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    ours_wrapped = [n for n, m in model.net.named_modules() if isinstance(m, LORA_MODULES)]
    assert sorted(wrapped) == config["target_modules"] == sorted(ours_wrapped) and len(wrapped) >= 4
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(x), loaded(model.normalize(x))
        with loaded.disable_adapter():  # the adapter matters: without it the logits are far off
            assert (loaded(model.normalize(x)) - ours).abs().max() > 1e-2
    assert (ours - theirs).abs().max() <= 1e-5


def test_the_fused_mapping_zeroes_the_rows_of_slices_roli_did_not_adapt():
    _, tensors = adapter(lora_model().net, "head")
    b = tensors["base_model.model.blocks.0.attn.qkv.lora_B.weight"]
    d = b.shape[0] // 3
    assert b.shape == (3 * d, 4) and not b[d:2 * d].any()  # key rows zero
    assert b[:d, :2].abs().sum() > 0 and not b[:d, 2:].any() and b[2 * d:, 2:].abs().sum() > 0 and not b[2 * d:, :2].any()
    assert {k for k in tensors if not k.startswith("base_model.model.blocks.")} == {
        "base_model.model.head.weight", "base_model.model.head.bias"}


def test_a_model_that_trained_more_than_lora_and_the_head_is_refused(tmp_path):
    model = lora_model()
    model.net.norm.weight.requires_grad_(True)
    with pytest.raises(ExportError, match=r"norm\.weight .*--format safetensors"):
        write_peft(model, tmp_path / "a", side(model, "vit_tiny_28"))
    assert not list(tmp_path.iterdir())


def test_what_peft_cannot_hold_is_refused_naming_it(monkeypatch):
    net = lora_model().net
    net.blocks[1].attn.qkv.drop = torch.nn.Identity()
    with pytest.raises(ExportError, match=r"one lora_dropout, but .* use \[0.0, 0.1\]"):
        adapter(net, "head")
    with pytest.raises(ExportError, match="modules named 'fc1' differ in rank"):
        patterns({"blocks.0.mlp.fc1": 2, "blocks.1.mlp.fc1": 4}, 2)
    monkeypatch.setattr(peft_export, "MAPPERS", {})  # a LoRA module of a kind the export does not know
    with pytest.raises(ExportError, match=r"cannot map the LoRA module blocks\.0\.attn\.qkv \(LoRAQKV\)"):
        adapter(net, "head")


def test_an_existing_folder_is_never_touched(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "mine.txt").write_text("mine")
    model = lora_model()
    with pytest.raises(FileExistsError, match="does not overwrite"):
        write_peft(model, tmp_path / "a", side(model, "vit_tiny_28"))
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["mine.txt"] and len(list(tmp_path.iterdir())) == 1


def _imports(path: Path):
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            yield from (a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module:
            yield n.module


def test_roli_never_imports_peft():
    """peft is a test dependency only: the export writes its files with json and safetensors."""
    files = list((ROOT / "src" / "roli").rglob("*.py"))
    assert len(files) > 50 and "roli.transfer.lora" in set(_imports(ROOT / "src/roli/transfer/peft_export.py"))
    assert not [p.name for p in files if any(m.split(".")[0] == "peft" for m in _imports(p))]
