"""Evaluate a saved roli checkpoint on any registered dataset, rebuilt from the config stored inside it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import torch

from roli.backbones import build_model
from roli.backbones.checkpoints import CheckpointError, load_file
from roli.config import AttackConfig, Config, ThreatConfig, attack_config, config_hash, from_dict, to_dict, upgrade
from roli.data import build_data, make_loader
from roli.evaluation.suite import SUITES, Suite, library_versions, run_suite
from roli.transfer import build_transfer
from roli.device import device_name, pick_device
from roli.precision import resolve


def load_model(path: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Config]:
    """The model of a roli checkpoint (best.pt or `roli export`), rebuilt from the config stored inside it."""
    ckpt = load_file(path)
    if not (isinstance(ckpt, dict) and ckpt.get("format") == "roli"):
        raise CheckpointError(f"{path} is not a roli checkpoint (expected best.pt of a run or a `roli export` file)")
    cfg = from_dict(Config, upgrade(ckpt["config"]), "checkpoint config")  # upgrade: roli 0.1 files still load
    # The weights come from the file itself: do not load the backbone's original checkpoint again.
    model = build_model(dataclasses.replace(cfg.backbone, pretrained=False), ckpt["num_classes"], load_weights=False)
    model = build_transfer(cfg.transfer).apply(model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


def suite_configs(cfg: Config, steps: int | None = None, step_size: float | None = None,
                  aa: Mapping | None = None) -> dict[str, AttackConfig | None]:
    """The suites' attacks: PGD-10 (the run's step/eps ratio), FGSM and AutoAttack (standard, seeded with the run's
    seed; `aa` overrides its fields, e.g. {"version": "custom", ...})."""
    base = cfg.eval.attack if cfg.eval.attack.name == "pgd" else attack_config("pgd")
    pgd = dataclasses.replace(base, steps=steps or 10, **({"step_size": step_size} if step_size is not None else {}))
    return {"clean": None, "pgd": pgd, "fgsm": attack_config("fgsm"),
            "autoattack": from_dict(AttackConfig, {"name": "autoattack", "version": "standard", "seed": cfg.run.seed,
                                                   **(aa or {})}, "--aa")}


def evaluate_checkpoint(path: str, data: str | None = None, split: str = "test", attack: str | None = None,
                        eps: float | str | None = None, norm: str | None = None, steps: int | None = None,
                        step_size: float | str | None = None, limit: int | None = None, data_root: str | None = None,
                        suite: str | None = None, aa: Mapping | None = None, aa_state: str | Path | None = None,
                        device: str = "auto", precision: str = "fp32", early_stop: bool = True) -> dict:
    """Clean and attacked accuracy, sanity checks and versions.

    The threat model is the run's (`threat` in its config) unless `eps`/`norm` override it. Without `suite`: clean +
    the run's validation attack (or `attack`), with its settings overridable. With `suite` (quick | full | sweep):
    the suite's attacks (see `suite_configs`). AutoAttack keeps resumable state in `aa_state` (default: a file
    beside the checkpoint named by its settings). `device`: auto (CUDA when present) | cpu | cuda. `precision`:
    fp32 (default, whatever the run trained in) | bf16 | fp16 for PGD/FGSM and the clean pass (`roli.precision`).
    `early_stop`: PGD/FGSM stop attacking broken examples (the same accuracy; False = the plain loop).
    """
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dev = pick_device(device)
    prec = resolve(precision, dev, "--precision")
    model, cfg = load_model(path, dev)
    threat_over = {k: v for k, v in (("eps", eps), ("norm", norm)) if v is not None}
    threat = from_dict(ThreatConfig, {**to_dict(cfg.threat), **threat_over}, "--eps/--norm")
    if step_size is not None:
        step_size = from_dict(ThreatConfig, {"eps": step_size}, "--step-size").eps  # "2/255" -> a float
    if suite is None:
        name = attack or cfg.eval.attack.name
        base = to_dict(cfg.eval.attack) if name == cfg.eval.attack.name else {"name": name}
        over = {k: v for k, v in (("steps", steps), ("step_size", step_size)) if v is not None}
        atk_cfg = from_dict(AttackConfig, {**base, **over, **(aa or {})}, f"{name} (--steps/--step-size/--aa)")
        configs, plan = {"clean": None, atk_cfg.name: atk_cfg}, Suite(("clean", atk_cfg.name))
    else:
        configs, plan = suite_configs(cfg, steps, step_size, aa), SUITES[suite]
        atk_cfg = configs["pgd"]
    data_over = {"name": data or cfg.data.name, "root": data_root if data_root is not None else
                 (cfg.data.root if data in (None, cfg.data.name) else None)}
    limits = {f"{split}_limit": limit} if limit is not None else {}  # default: the run's own limits
    data_cfg = dataclasses.replace(cfg.data, **data_over, **limits)
    splits = build_data(data_cfg)
    if splits.num_classes != model.head.out_features:
        raise CheckpointError(f"{data_cfg.name} has {splits.num_classes} classes but the model outputs "
                              f"{model.head.out_features}")
    loader = make_loader(splits.split(split), data_cfg.eval_batch_size, shuffle=False, pin_memory=dev.type == "cuda")
    if aa_state is None and "autoattack" in plan.attacks:
        key = config_hash(configs["autoattack"], threat, data_cfg, split)[:10]
        aa_state = Path(path).with_name(f"autoattack-{data_cfg.name}-{split}-{key}.state.json")
    out = run_suite(model, loader, plan, configs, threat, aa_state=aa_state, seed=cfg.run.seed, precision=prec,
                    early_stop=early_stop)
    return {"checkpoint": str(path), "started": started, "suite": suite, "data": {**splits.info, "split": split},
            "attack": to_dict(atk_cfg), **out, "versions": library_versions(),
            "device": device_name(dev), "threads": torch.get_num_threads()}
