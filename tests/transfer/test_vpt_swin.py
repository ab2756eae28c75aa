"""VPT (deep and shallow) on timm's SwinTransformer: prompts in every window's attention, tiled at patch merging."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock

from roli.backbones.normalize import Classifier, PixelNormalize
from roli.config import TrainConfig, TransferConfig, from_dict
from roli.training.optim import build_optimizer
from roli.transfer import build_transfer
from roli.transfer.base import UnsupportedBackbone, set_train_mode
from roli.transfer.prompt_swin import PromptedPatchMerging, PromptedSwinBlock

pytestmark = pytest.mark.usefixtures("one_thread")

C, T = 5, 10
VPT = ["vpt_deep", "vpt_shallow"]
# (img_size, window_size, depths, num_heads) of tiny random-init Swins, each stage's (window, shift) as timm computes:
GEOMETRIES = {
    # 16x16 then 8x8, window 4: shifted windows (and attn_mask) in both stages, one patch merging
    "shift": (64, 4, (2, 2), (2, 4)),
    # 14x14 then 7x7, window 4: timm pads the maps to 16x16 and 8x8 (shifted and not)
    "pad": (56, 4, (2, 2), (2, 4)),
    # 16x16, 8x8, 4x4, window 8: stage 1's map equals the window (no shift), stage 2's is smaller (window 4)
    "small": (64, 8, (2, 2, 2), (2, 4, 8)),
}


def swin(geometry: str = "shift", seed: int = 0, **kwargs) -> Classifier:
    img, ws, depths, heads = GEOMETRIES[geometry]
    torch.manual_seed(seed)
    net = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img, embed_dim=32,
                            depths=depths, num_heads=heads, window_size=ws, num_classes=C, **kwargs)
    return Classifier(net, PixelNormalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), in_chans=3))


def apply(model: Classifier, name: str, **fields) -> Classifier:
    return build_transfer(from_dict(TransferConfig, {"name": name, **fields}, "transfer")).apply(model)


def images(geometry: str = "shift", n: int = 3, seed: int = 1) -> torch.Tensor:
    img = GEOMETRIES[geometry][0]
    return torch.rand(n, 3, img, img, generator=torch.Generator().manual_seed(seed))


def prompts(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.endswith(".prompt")}


def blocks(model) -> list[PromptedSwinBlock]:
    return [m for m in model.modules() if isinstance(m, PromptedSwinBlock)]


@pytest.fixture
def invisible_prompts(monkeypatch):
    """Test only: every query gets a -inf bias on the prompt keys, so window tokens attend to window tokens only."""
    original = PromptedSwinBlock.attention_bias

    def blind(self, t, mask):
        bias = original(self, t, mask).clone()
        bias[..., :t] = float("-inf")
        return bias

    monkeypatch.setattr(PromptedSwinBlock, "attention_bias", blind)


# ----------------------------------------------------------------------------------------- function


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("name", VPT)
def test_invisible_prompts_leave_the_plain_swin_logits(name, geometry, invisible_prompts):
    """With prompt keys masked out, the window tokens' path is timm's own (bias, shift mask, padding, window order
    and merging included): the prompted logits equal the plain model's."""
    plain = swin(geometry).eval()
    model = apply(copy.deepcopy(plain), name).eval()
    geo = [(b.base_layer.window_size, b.base_layer.shift_size) for b in blocks(model)]
    assert any(s != (0, 0) for _, s in geo)  # every geometry has a shifted block ...
    assert any(isinstance(m, PromptedPatchMerging) for m in model.modules())  # ... and a patch merging
    x = images(geometry)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-5)


@pytest.mark.parametrize("name", VPT)
def test_ordinary_prompts_change_the_logits(name):
    plain = swin().eval()
    model = apply(copy.deepcopy(plain), name).eval()
    x = images()
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() > 1e-3


def _reference_block(block: SwinTransformerBlock, x: torch.Tensor, p: torch.Tensor):
    """One Swin block over x (B, H, W, C) with prompts p (B, T, C), window by window in plain torch (eval)."""
    B, H, W, C = x.shape
    t, ws, (sh, sw) = p.shape[1], block.window_size[0], block.shift_size
    attn, heads = block.attn, block.attn.num_heads
    xs = torch.roll(block.norm1(x), (-sh, -sw), (1, 2))
    pn = block.norm1(p)
    rel = attn._get_rel_pos_bias()[0]  # timm's (heads, N, N)
    out_x, out_p = torch.zeros_like(xs), []
    for w, (i, j) in enumerate((i, j) for i in range(0, H, ws) for j in range(0, W, ws)):
        tokens = torch.cat([pn, xs[:, i:i + ws, j:j + ws].reshape(B, ws * ws, C)], dim=1)
        q, k, v = attn.qkv(tokens).reshape(B, -1, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        logits[..., t:, t:] += rel + (block.attn_mask[w] if block.attn_mask is not None else 0)
        o = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, C))
        out_p.append(o[:, :t])
        out_x[:, i:i + ws, j:j + ws] = o[:, t:].reshape(B, ws, ws, C)
    x = x + torch.roll(out_x, (sh, sw), (1, 2))
    p = p + torch.stack(out_p).mean(0)
    x = x + block.mlp(block.norm2(x))
    return x, p + block.mlp(block.norm2(p))


def test_a_prompted_shifted_block_matches_a_window_by_window_reference():
    model = apply(swin(), "vpt_deep").eval()
    block = blocks(model)[1]  # stage 0, shifted windows, 16 windows of 4x4
    assert block.base_layer.shift_size == (2, 2) and block.base_layer.attn_mask is not None
    g = torch.Generator().manual_seed(0)
    x, p = torch.randn(2, 16, 16, 32, generator=g), torch.randn(2, T, 32, generator=g)
    with torch.no_grad():
        ref_x, ref_p = _reference_block(block.base_layer, x, p)
        out_x, out_p = block.forward_prompted(x, p)
    assert torch.allclose(out_x, ref_x, atol=1e-5) and torch.allclose(out_p, ref_p, atol=1e-5)


def test_patch_merging_tiles_the_prompts_like_a_2x2_patch_of_copies():
    model = apply(swin(), "vpt_shallow").eval()
    merge = next(m for m in model.modules() if isinstance(m, PromptedPatchMerging))
    p = torch.randn(2, T, 32)
    x = p[:, :, None, None, :].expand(-1, -1, 2, 2, -1).reshape(2 * T, 2, 2, 32)  # each prompt as a 2x2 patch
    with torch.no_grad():
        merged_x, merged_p = merge((x, p))
    assert merged_p.shape == (2, T, 64)
    assert torch.allclose(merged_p.reshape(2 * T, 64), merged_x.reshape(2 * T, 64), atol=1e-6)


def test_examples_do_not_see_each_other():
    model = apply(swin("pad"), "vpt_shallow").eval()
    x = images("pad", n=4)
    with torch.no_grad():
        assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)


def test_deep_prompts_replace_the_incoming_ones_and_shallow_flows_through():
    x = images()
    for name, owners in (("vpt_deep", 4), ("vpt_shallow", 1)):
        model = apply(swin(), name).eval()
        seen = []
        hooks = [b.register_forward_hook(lambda m, args, out, seen=seen: seen.append(args[0])) for b in blocks(model)]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        assert sum(b.prompt is not None for b in blocks(model)) == owners
        # what each block receives: block 0 a tensor; later blocks (x, prompts of the previous block's output)
        assert isinstance(seen[0], torch.Tensor) and all(isinstance(s, tuple) for s in seen[1:])
        if name == "vpt_deep":  # each block's own prompt is what its attention sees, not the incoming one
            block = blocks(model)[2]  # stage 1, first block: incoming prompts were merged
            with torch.no_grad():
                ref_x, ref_p = block.forward_prompted(seen[2][0], block.prompt.expand(3, -1, -1))
                out_x, out_p = block(seen[2])
            assert torch.equal(out_x, ref_x) and torch.equal(out_p, ref_p)


# ------------------------------------------------------------------------------------ shapes and counts


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("name", VPT)
def test_output_shapes_are_the_plain_models(name, geometry):
    plain = swin(geometry).eval()
    x = images(geometry)
    with torch.no_grad():
        feats, logits = plain.net.forward_features(plain.normalize(x)).shape, plain(x).shape
        model = apply(plain, name).eval()
        assert model.net.forward_features(model.normalize(x)).shape == feats
        assert model(x).shape == logits == (3, C)


def test_vpt_refuses_a_swin_that_already_has_prompts():
    model = apply(swin(), "vpt_deep")
    with pytest.raises(UnsupportedBackbone, match="already has prompts"):
        apply(model, "vpt_shallow")


def _swin_b():
    return Classifier(timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=10),
                      PixelNormalize((0.5,) * 3, (0.5,) * 3))


def test_reference_sized_prompt_counts():
    """Swin-B (depths 2-2-18-2, widths 128..1024): deep 12,032·T, shallow 128·T; ViT-B deep 12·768·T."""
    base = _swin_b()
    counts = {}
    for name in VPT:
        for t in (10, 20):
            model = apply(copy.deepcopy(base), name, num_tokens=t)
            counts[name, t] = sum(p.numel() for p in prompts(model).values())
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            assert trainable == counts[name, t] + sum(p.numel() for p in model.head.parameters())
            if name == "vpt_deep" and t == 10:
                shapes = [tuple(p.shape) for p in prompts(model).values()]
                assert shapes == [(1, t, 128)] * 2 + [(1, t, 256)] * 2 + [(1, t, 512)] * 18 + [(1, t, 1024)] * 2
    assert counts["vpt_deep", 10] == 120_320 and counts["vpt_deep", 20] == 240_640  # 12,032·T
    assert counts["vpt_shallow", 10] == 1280 and counts["vpt_shallow", 20] == 2560
    vit = Classifier(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10),
                     PixelNormalize((0.5,) * 3, (0.5,) * 3))
    assert sum(p.numel() for p in prompts(apply(vit, "vpt_deep", num_tokens=20)).values()) == 12 * 20 * 768


def test_prompt_init_range():
    model = apply(swin(), "vpt_deep", num_tokens=50)
    bound = (6 / (3 * 4 * 4 + 32)) ** 0.5  # in_chans·patch area + embed_dim, for every stage's prompts
    for p in prompts(model).values():
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound


# -------------------------------------------------------------------------------- training contract


@pytest.mark.parametrize("name", VPT)
def test_one_step_trains_only_prompts_and_head(name):
    model = apply(swin(), name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(prompts(model)) | {f"net.head.fc.{k}" for k in ("weight", "bias")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.1, momentum=0.9))
    set_train_mode(model, True)
    F.cross_entropy(model(images(n=4)), torch.arange(4) % C).backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), f"{n} did not move"
        else:
            assert p.grad is None and torch.equal(p, before[n]), f"frozen {n} changed"


def test_gradients_reach_every_deep_prompt():
    model = apply(swin("small", drop_path_rate=0.0), "vpt_deep")
    set_train_mode(model, True)
    F.cross_entropy(model(images("small", n=4)), torch.arange(4) % C).backward()
    grads = {n: p.grad for n, p in prompts(model).items()}
    assert len(grads) == 6
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items()
                                                                               if g is None or not g.any()]


@pytest.mark.parametrize("name", VPT)
def test_state_dict_round_trips_into_a_fresh_prompted_swin(name):
    model = apply(swin(seed=0), name)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    set_train_mode(model, True)
    F.cross_entropy(model(images(n=4)), torch.arange(4) % C).backward()
    opt.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = apply(swin(seed=1), name).eval()
    model.eval()
    x = images(seed=2)
    with torch.no_grad():
        expected = model(x)
        assert not torch.allclose(fresh(x), expected)
        result = fresh.load_state_dict(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert torch.equal(fresh(x), expected)
