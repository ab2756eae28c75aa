"""roli.checkpoints (weights_only loads, atomic writes that never clobber) and roli.backbones.weights (strict key/shape checks)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from roli.backbones import create_backbone
from roli.backbones.weights import extract_state_dict, load_backbone_weights
from roli.checkpoints import atomic_save, load_file, save_new
from roli.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


class NeedsCode:
    """Unpickling an instance of this class needs code: weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.payload = torch.zeros(3)


def tiny(num_classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone("vit_tiny_28", num_classes=num_classes).eval()


def features(model, x):
    with torch.no_grad():
        return model.net.forward_features(model.normalize(x))


@pytest.fixture(scope="module")
def source():
    """A source model and its backbone state dict (as `torch.save(net.state_dict())` writes it)."""
    model = tiny(num_classes=4, seed=1)
    return model, {k: v.clone() for k, v in model.net.state_dict().items()}


@pytest.fixture
def x():
    return torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def non_head_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in sa.items() if not k.startswith("head."))


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "roli"])
def test_round_trip_loads_all_but_the_head(tmp_path, source, x, wrap):
    model, sd = source
    obj = {
        "plain": sd,
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": sd, "optimizer": {"lr": 0.1}},
        "roli": {"format": "roli", "model": {"normalize.mean": torch.zeros(1), **{f"net.{k}": v for k, v in sd.items()}}},
    }[wrap]
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    fresh = tiny(num_classes=7, seed=2)  # another head size: the head is never loaded
    head_before = {k: v.clone() for k, v in fresh.net.head.state_dict().items()}
    assert not non_head_equal(fresh.net, model.net)

    report = load_backbone_weights(fresh.net, extract_state_dict(load_file(path), path), "head", path)

    assert non_head_equal(fresh.net, model.net)
    assert all(torch.equal(v, head_before[k]) for k, v in fresh.net.head.state_dict().items())
    assert report["missing_head"] == ["head.bias", "head.weight"]
    assert report["loaded"] == len(sd) - 2
    torch.testing.assert_close(features(fresh, x), features(model, x), rtol=0, atol=0)


def test_create_backbone_with_checkpoint(tmp_path, source, x):
    model, sd = source
    path = tmp_path / "w.pt"
    torch.save({"model": sd}, path)
    loaded = create_backbone("vit_tiny_28", checkpoint=str(path), num_classes=4).eval()
    torch.testing.assert_close(features(loaded, x), features(model, x), rtol=0, atol=0)
    assert loaded.head.out_features == 4


def test_another_architecture_is_a_shape_mismatch(tmp_path):
    other = VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=4, embed_dim=64, depth=4,
                              num_heads=4)  # the same key names, other widths
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    fresh = tiny()
    before = {k: v.clone() for k, v in fresh.net.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(fresh.net, extract_state_dict(load_file(path)), "head", path)
    msg = str(info.value)
    assert "shape mismatch" in msg and str(path) in msg
    assert "(1, 17, 64)" in msg and "(1, 17, 128)" in msg  # pos_embed: file vs model
    assert all(torch.equal(v, before[k]) for k, v in fresh.net.state_dict().items())  # nothing half-loaded
    with pytest.raises(CheckpointError, match="shape mismatch"):
        create_backbone("vit_tiny_28", checkpoint=str(path), num_classes=4)


def test_a_different_family_does_not_fit(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(create_backbone("test_resnet", num_classes=4).net.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit this architecture"):
        create_backbone("vit_tiny_28", checkpoint=str(path), num_classes=4)


def test_missing_non_head_keys_are_an_error(tmp_path, source):
    _, sd = source
    partial = {k: v for k, v in sd.items() if k != "blocks.2.attn.qkv.weight"}
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(tiny().net, partial, "head", "partial.pt")
    msg = str(info.value)
    assert "missing ['blocks.2.attn.qkv.weight'] (1)" in msg
    assert "partial.pt" in msg


def test_missing_head_only_is_fine(source):
    _, sd = source
    no_head = {k: v for k, v in sd.items() if not k.startswith("head.")}
    report = load_backbone_weights(tiny().net, no_head, "head", "x.pt")
    assert report["loaded"] == len(no_head)


def test_unexpected_keys_are_an_error(source):
    _, sd = source
    extra = dict(sd, **{"adapter.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected \['adapter.weight'\] \(1\)"):
        load_backbone_weights(tiny().net, extra, "head", "x.pt")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.02])
def test_truncated_file_is_a_checkpoint_error(tmp_path, source, keep):
    _, sd = source
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as info:
        load_file(path)
    msg = str(info.value)
    assert str(path) in msg and "not a readable torch checkpoint" in msg


def test_empty_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_file(path)


@pytest.mark.parametrize("content", [b"<!DOCTYPE html><html><body>404 Not Found</body></html>", b"garbage bytes"])
def test_non_checkpoint_file_is_reported_as_unreadable_not_as_needing_code(tmp_path, content):
    """An HTML error page saved by a failed download, or random bytes, raise UnpicklingError in torch's weights-only
    unpickler too; that must not be reported as a checkpoint that needs code to unpickle."""
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_file(path)
    msg = str(info.value)
    assert str(path) in msg and "not a torch checkpoint" in msg
    assert "needs code" not in msg and "state_dict" not in msg  # not misreported as a pickle that needs code


@pytest.mark.parametrize("obj", ["instance", "module"])
def test_pickle_needing_code_is_refused(tmp_path, obj):
    path = tmp_path / "code.pt"
    torch.save(NeedsCode() if obj == "instance" else nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError) as info:
        load_file(path)
    msg = str(info.value)
    assert "weights_only" in msg and str(path) in msg
    assert "state_dict" in msg  # says how to fix it


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_file(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_file(tmp_path)  # a folder is not a weights file


@pytest.mark.parametrize("obj", [[torch.zeros(1)], {}, {"a": 1}, {"model": {"a": "b"}}, torch.zeros(3)])
def test_no_state_dict_inside(obj):
    with pytest.raises(CheckpointError, match="no state dict found"):
        extract_state_dict(obj, "thing.pt")


def test_roli_format_keeps_only_the_backbone():
    model = {"net.a": torch.ones(1), "normalize.mean": torch.zeros(1), "net.b.c": torch.zeros(2)}
    obj = {"format": "roli", "model": model}
    assert set(extract_state_dict(obj)) == {"a", "b.c"}


def test_atomic_save_writes_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "dir" / "ckpt.pt"
    atomic_save({"w": torch.arange(4.0)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4.0))
    atomic_save({"w": torch.arange(5.0)}, path)  # replacing its own file is allowed
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5.0))
    assert os.listdir(path.parent) == ["ckpt.pt"]


def test_atomic_save_uses_the_usual_file_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_save({"w": torch.ones(1)}, tmp_path / "a.pt")
        os.umask(0o027)
        atomic_save({"w": torch.ones(1)}, tmp_path / "b.pt")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o640


def test_atomic_save_failure_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.ones(2)}, path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"w": lambda: 0}, path)  # a lambda cannot be pickled
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))


def test_save_new_refuses_to_overwrite(tmp_path):
    path = tmp_path / "export.pt"
    save_new({"w": torch.ones(1)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(1))
    with pytest.raises(FileExistsError, match="does not overwrite"):
        save_new({"w": torch.zeros(1)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(1))
    assert os.listdir(tmp_path) == ["export.pt"]
