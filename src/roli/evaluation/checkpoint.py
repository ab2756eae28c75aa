"""Evaluate a saved roli checkpoint on any registered dataset, rebuilt from the config stored inside it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import torch

from roli.backbones import build_model
from roli.backbones.checkpoints import CheckpointError, load_file
from roli.config import AttackConfig, Config, config_hash, from_dict, to_dict
from roli.data import build_data, make_loader
from roli.evaluation.suite import SUITES, Suite, library_versions, run_suite, scaled
from roli.transfer import build_transfer


def load_model(path: str) -> tuple[torch.nn.Module, Config]:
    ckpt = load_file(path)
    if not (isinstance(ckpt, dict) and ckpt.get("format") == "roli"):
        raise CheckpointError(f"{path} is not a roli checkpoint (expected best.pt of a run or a `roli export` file)")
    cfg = from_dict(Config, ckpt["config"], "checkpoint config")
    # The weights come from the file itself: do not load the backbone's original checkpoint again.
    model = build_model(dataclasses.replace(cfg.backbone, pretrained=False), ckpt["num_classes"], load_weights=False)
    model = build_transfer(cfg.transfer).apply(model)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def suite_configs(cfg: Config, eps: float | None = None, steps: int | None = None, step_size: float | None = None,
                  aa: Mapping | None = None) -> dict[str, AttackConfig | None]:
    """The suites' attacks on the run's threat model: PGD-10 (the run's step/eps ratio), FGSM and AutoAttack
    (standard, seeded with the run's seed; `aa` overrides its fields, e.g. {"version": "custom", ...})."""
    base = cfg.eval_attack()
    pgd = dataclasses.replace(scaled(base, base.eps if eps is None else eps), steps=steps or 10)
    if step_size is not None:
        pgd = dataclasses.replace(pgd, step_size=step_size)
    threat = {"norm": pgd.norm, "eps": pgd.eps}
    return {"clean": None, "pgd": pgd,
            "fgsm": from_dict(AttackConfig, {"name": "fgsm", **threat}, "fgsm"),
            "autoattack": from_dict(AttackConfig, {"name": "autoattack", **threat, "version": "standard",
                                                   "seed": cfg.run.seed, **(aa or {})}, "autoattack")}


def evaluate_checkpoint(path: str, data: str | None = None, split: str = "test", attack: str | None = None,
                        eps: float | str | None = None, steps: int | None = None, step_size: float | str | None = None,
                        limit: int | None = None, data_root: str | None = None, suite: str | None = None,
                        aa: Mapping | None = None, aa_state: str | Path | None = None) -> dict:
    """Clean and attacked accuracy, sanity checks and versions.

    Without `suite`: clean + the run's validation attack (or `attack`), with its settings overridable. With
    `suite` (quick | full | sweep): the suite's attacks on the run's threat model (see `suite_configs`).
    AutoAttack keeps resumable state in `aa_state` (default: a file beside the checkpoint named by its settings).
    """
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    model, cfg = load_model(path)
    eps, step_size = (None if v is None else from_dict(AttackConfig, {"eps": v}, where).eps
                      for v, where in ((eps, "--eps"), (step_size, "--step-size")))
    if suite is None:
        overrides = {k: v for k, v in {"name": attack, "eps": eps, "steps": steps, "step_size": step_size}.items()
                     if v is not None}
        atk_cfg = from_dict(type(cfg.attack), {**to_dict(cfg.eval_attack()), **overrides, **(aa or {})},
                            "eval attack")
        configs, plan = {"clean": None, atk_cfg.name: atk_cfg}, Suite(("clean", atk_cfg.name))
    else:
        configs, plan = suite_configs(cfg, eps, steps, step_size, aa), SUITES[suite]
        atk_cfg = configs["pgd"]
    data_over = {"name": data or cfg.data.name, "root": data_root if data_root is not None else
                 (cfg.data.root if data in (None, cfg.data.name) else None)}
    limits = {f"{split}_limit": limit} if limit is not None else {}  # default: the run's own limits
    data_cfg = dataclasses.replace(cfg.data, **data_over, **limits)
    splits = build_data(data_cfg)
    if splits.num_classes != model.head.out_features:
        raise CheckpointError(f"{data_cfg.name} has {splits.num_classes} classes but the model outputs "
                              f"{model.head.out_features}")
    loader = make_loader(splits.split(split), data_cfg.eval_batch_size, shuffle=False)
    if aa_state is None and "autoattack" in plan.attacks:
        key = config_hash(configs["autoattack"], data_cfg, split)[:10]
        aa_state = Path(path).with_name(f"autoattack-{data_cfg.name}-{split}-{key}.state.json")
    out = run_suite(model, loader, plan, configs, aa_state=aa_state, seed=cfg.run.seed)
    return {"checkpoint": str(path), "started": started, "suite": suite, "data": {**splits.info, "split": split},
            "attack": to_dict(atk_cfg), **out, "versions": library_versions(),
            "device": str(next(model.parameters()).device), "threads": torch.get_num_threads()}
