"""Evaluate a saved roli checkpoint on any registered dataset, rebuilt from the config stored inside it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import torch

from roli import distributed
from roli.config import AttackConfig, Config, ThreatConfig, attack_config, config_hash, from_dict, to_dict
from roli.data import build_data
from roli.device import device_name, oom_hint
from roli.errors import CheckpointError
from roli.evaluation.integrity import PROBE_RESTARTS, PROBE_STEPS
from roli.evaluation.suite import SUITES, Suite, library_versions, run_suite
from roli.precision import resolve
from roli.transfer.state import load_model

log = logging.getLogger(__name__)


def suite_configs(cfg: Config, steps: int | None = None, step_size: float | None = None,
                  aa: Mapping | None = None) -> dict[str, AttackConfig | None]:
    """The suites' attacks: PGD-10 (the run's step/eps ratio), FGSM, AutoAttack (standard, seeded with the run's
    seed; `aa` overrides its fields, e.g. {"version": "custom", ...}) and the integrity probe PGD-100 with 5
    restarts (PGD-10's step size; `roli.evaluation.integrity`)."""
    base = cfg.eval.attack if cfg.eval.attack.name == "pgd" else attack_config("pgd")
    pgd = dataclasses.replace(base, steps=steps or 10, **({"step_size": step_size} if step_size is not None else {}))
    probe = dataclasses.replace(pgd, steps=PROBE_STEPS, restarts=PROBE_RESTARTS, random_start=True, select="best")
    return {"clean": None, "pgd": pgd, "pgd100": probe, "fgsm": attack_config("fgsm"),
            "autoattack": from_dict(AttackConfig, {"name": "autoattack", "version": "standard", "seed": cfg.run.seed,
                                                   **(aa or {})}, "--aa")}


def eval_path(checkpoint: str | Path, data: str, split: str, suite: str | None) -> Path:
    """Where `roli eval` writes its JSON by default: beside the checkpoint, named by data, split and suite (the
    report reads eval-*.json from run folders; a sweep's `evaluate:` skips a file that exists)."""
    return Path(checkpoint).with_name(f"eval-{data}-{split}{f'-{suite}' if suite else ''}.json")


def evaluate_checkpoint(path: str, data: str | None = None, split: str = "test", attack: str | None = None,
                        eps: float | str | None = None, norm: str | None = None, steps: int | None = None,
                        step_size: float | str | None = None, limit: int | None = None, data_root: str | None = None,
                        suite: str | None = None, aa: Mapping | None = None, aa_state: str | Path | None = None,
                        device: str = "auto", backbone: str | None = None, precision: str = "fp32",
                        early_stop: bool = True) -> dict:
    """Clean and attacked accuracy, sanity checks and versions.

    The threat model is the run's (`threat` in its config) unless `eps`/`norm` override it. Without `suite`: clean +
    the run's validation attack (or `attack`), with its settings overridable. With `suite` (quick | full | sweep):
    the suite's attacks (see `suite_configs`). AutoAttack keeps resumable state in `aa_state` (default: a file
    beside the checkpoint named by its settings). `device`: auto (CUDA when present) | cpu | cuda. `backbone`: the
    backbone weights file of a lean checkpoint, when it has moved (see `load_model`). `precision`: fp32 (default,
    whatever the run trained in) | bf16 | fp16 for PGD/FGSM and the clean pass (`roli.precision`). `early_stop`:
    PGD/FGSM stop attacking broken examples (the same accuracy; False = the plain loop).
    """
    started = datetime.now(UTC).isoformat(timespec="seconds")
    w, dev = distributed.init(device)  # under torchrun: each rank evaluates its shard, counts are summed
    prec = resolve(precision, dev, "--precision")
    model, cfg = load_model(path, dev, backbone=backbone)
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
    loader = distributed.sharded_loader(splits.split(split), data_cfg.eval_batch_size, shuffle=False,
                                        pin_memory=dev.type == "cuda")
    if aa_state is None and "autoattack" in plan.attacks:
        key = config_hash(configs["autoattack"], threat, data_cfg, split)[:10]
        aa_state = Path(path).with_name(f"autoattack-{data_cfg.name}-{split}-{key}.state.json")
    with oom_hint("evaluation", "data.eval_batch_size", data_cfg.eval_batch_size,
                  "evaluate on the CPU (--device cpu) or free GPU memory; the batch size is the run's"):
        out = run_suite(model, loader, plan, configs, threat, aa_state=aa_state, seed=cfg.run.seed, precision=prec,
                        early_stop=early_stop)
    return {"checkpoint": str(path), "started": started, "suite": suite, "data": {**splits.info, "split": split},
            "attack": to_dict(atk_cfg), **out, "versions": library_versions(),
            "device": device_name(dev), "threads": torch.get_num_threads(), "world_size": w.size}
