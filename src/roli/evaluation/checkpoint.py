"""Evaluate a saved roli checkpoint on any registered dataset, rebuilt from the config stored inside it."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import torch

from roli.attacks import build_attack
from roli.backbones import build_model
from roli.backbones.checkpoints import CheckpointError, load_file
from roli.config import Config, from_dict, to_dict
from roli.data import build_data, make_loader
from roli.evaluation.accuracy import evaluate
from roli.transfer import build_transfer


def load_model(path: str) -> tuple[torch.nn.Module, Config]:
    ckpt = load_file(path)
    if not (isinstance(ckpt, dict) and ckpt.get("format") == "roli"):
        raise CheckpointError(f"{path} is not a roli checkpoint (expected best.pt of a run or a `roli export` file)")
    cfg = from_dict(Config, ckpt["config"], "checkpoint config")
    # The weights come from the file itself: do not load the backbone's original checkpoint again.
    model = build_model(dataclasses.replace(cfg.backbone, checkpoint=None, pretrained=False), ckpt["num_classes"])
    model = build_transfer(cfg.transfer).apply(model)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def evaluate_checkpoint(path: str, data: str | None = None, split: str = "test", attack: str | None = None,
                        eps: float | str | None = None, steps: int | None = None, step_size: float | str | None = None,
                        limit: int | None = None, data_root: str | None = None) -> dict:
    """Clean and attacked accuracy; attack settings default to the run's validation attack."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    model, cfg = load_model(path)
    overrides = {k: v for k, v in {"name": attack, "eps": eps, "steps": steps, "step_size": step_size}.items()
                 if v is not None}
    atk_cfg = from_dict(type(cfg.attack), {**to_dict(cfg.eval_attack()), **overrides}, "eval attack")
    data_over = {"name": data or cfg.data.name, "root": data_root if data_root is not None else
                 (cfg.data.root if data in (None, cfg.data.name) else None)}
    limits = {f"{split}_limit": limit} if limit is not None else {}  # default: the run's own limits
    data_cfg = dataclasses.replace(cfg.data, **data_over, **limits)
    splits = build_data(data_cfg)
    if splits.num_classes != model.head.out_features:
        raise CheckpointError(f"{data_cfg.name} has {splits.num_classes} classes but the model outputs "
                              f"{model.head.out_features}")
    loader = make_loader(splits.split(split), data_cfg.eval_batch_size, shuffle=False)
    torch.manual_seed(cfg.run.seed)
    res = evaluate(model, loader, {"clean": None, atk_cfg.name: build_attack(atk_cfg)})
    return {"checkpoint": str(path), "started": started, "data": {**splits.info, "split": split},
            "attack": to_dict(atk_cfg), "results": res}
