"""Weight interpolation of a finished run (WiSE-FT, Wortsman et al., CVPR 2022): the model
theta(alpha) = (1 - alpha) * theta_start + alpha * theta_finetuned, measured clean and under the run's `eval.attack`
on validation for each alpha; alpha is chosen on validation robust accuracy only, and the test split is measured at
the chosen alpha and at 0 and 1 (the references). It draws the clean-vs-robust trade-off of a run without training.

- theta_start is the run's own start, rebuilt as the pipeline built it (`start_model`: seeded with `run.seed`, the
  data, then the backbone file, the RanLI head, RoLI's or LP-FT's stage-1 head, the method's injected weights at
  their seeded init: LoRA B = 0, the adapters' zero up-projection, VPT's seeded prompts); theta_finetuned is best.pt.
- What moves is the run's trained state (`roli.transfer.state.trained_keys`): every weight for full finetuning, the
  injected weights and the head for PEFT, the biases and the head for BitFit; the frozen backbone is the same in
  both. BatchNorm running statistics, where they trained, are interpolated like the weights (WiSE-FT's reference code
  interpolates the whole state dict), not recomputed: recomputing needs training-mode passes over training data
  and would mix a second change into the curve. Integer buffers (num_batches_tracked) take the end value for
  alpha > 0.
- Ties in validation robust accuracy go to the larger alpha: the run's own weights (alpha 1) are kept unless a
  smaller alpha is strictly better.
- Every alpha is attacked with the RNG seeded by `run.seed` (the same PGD random starts for every alpha), so the
  curve is reproducible and its points differ only by their weights.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from roli.attacks import build_attack
from roli.backbones import build_model
from roli.backbones.normalize import Classifier, check_inputs
from roli.checkpoints import load_file
from roli.config import Config, load_config, to_dict
from roli.data import Splits, build_data
from roli.device import device_name, pick_device
from roli.distributed import sharded_loader
from roli.errors import UsageError
from roli.evaluation.accuracy import evaluate
from roli.files import read_json
from roli.precision import run_precision
from roli.transfer import build_transfer
from roli.transfer.heads import head_state, init_ranli, init_roli
from roli.transfer.state import check_backbone, load_trained_state, trained_keys
from roli.version import versions

log = logging.getLogger(__name__)
DEFAULT_ALPHAS = tuple(round(i / 10, 1) for i in range(11))  # 0, 0.1, ..., 1


def check_alphas(values: list[float], shown: str) -> list[float]:
    """Sorted unique alphas in [0, 1], with 0 and 1 always added (the start and the run: the references the test
    numbers are reported at); anything else is a UsageError naming `shown` (what the user wrote)."""
    bad = [v for v in values if isinstance(v, bool) or not (math.isfinite(v) and 0 <= v <= 1)]
    if not values or bad:
        raise UsageError(f"--alphas: every alpha must be a number in [0, 1], got {shown}; e.g. --alphas 0,0.5,1")
    return sorted({*(float(v) for v in values), 0.0, 1.0})


def parse_alphas(text: str | None) -> list[float]:
    """`--alphas 0,0.25,1` -> `check_alphas`; None = DEFAULT_ALPHAS (0, 0.1, ..., 1)."""
    if text is None:
        return list(DEFAULT_ALPHAS)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--alphas takes numbers in [0, 1] separated by commas (e.g. 0,0.5,1), not {text!r}") from None
    return check_alphas(values, repr(text))


def mix(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * start + alpha * end for every floating tensor (exactly `start` at 0 and `end` at 1); other
    tensors (integer counters) are `end`'s for alpha > 0."""
    if set(start) != set(end):
        raise ValueError(f"the two states differ in keys: {sorted(set(start) ^ set(end))[:5]}")
    out = {}
    for k, s in start.items():
        e = end[k]
        if alpha == 0 or alpha == 1:
            out[k] = (s if alpha == 0 else e).clone()
        elif s.is_floating_point():
            out[k] = torch.lerp(s, e.to(s.dtype), alpha)
        else:
            out[k] = e.clone()
    return out


def choose_alpha(rows: list[dict], key: str = "val_robust") -> float:
    """The alpha of the row with the highest `key` (validation robust accuracy); a tie goes to the larger alpha."""
    return max(rows, key=lambda r: (r[key], r["alpha"]))["alpha"]


def start_model(cfg: Config, stage1_checkpoint: str | None = None) -> tuple[Classifier, Splits]:
    """The run's model as training started, and its data: the same steps, in the same order and seeded the same
    way as roli.training.pipeline (seed_everything, build_data, _build_model), so the same random numbers build the
    same head and injected weights (tests/evaluation/test_interpolate.py compares them with what fit() received)."""
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed % 2**32)
    torch.manual_seed(cfg.run.seed)
    splits = build_data(cfg.data)
    model = build_model(cfg.backbone, splits.num_classes)
    check_inputs(model, splits.train, splits.num_classes, cfg.backbone.name)
    init_ranli(model, cfg.transfer)
    if stage1_checkpoint is not None:
        init_roli(model, head_state(stage1_checkpoint), stage1_checkpoint)
    return build_transfer(cfg.transfer).apply(model), splits


def finished_run(run_dir: str | Path) -> tuple[Config, dict]:
    """A complete run's config and results.json; anything else (no such run, not finished, a model given from
    Python) is a one-line UsageError naming the fix."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "results.json").is_file():
        raise UsageError(f"{run_dir} is not a roli run folder (no config.yaml and results.json); pass a run's folder")
    results = read_json(run_dir / "results.json", "results.json")
    if results.get("status") != "complete" or not (run_dir / "best.pt").is_file():
        raise UsageError(f"{run_dir} has not completed (status {results.get('status')!r}); finish it first with "
                         f"`roli run --resume {run_dir}`")
    cfg = load_config(run_dir / "config.yaml")
    if cfg.backbone.name.startswith("custom:"):
        raise UsageError(f"{run_dir} trained a model given from Python ({cfg.backbone.name}); roli cannot rebuild its "
                         "start: interpolate it in Python with roli.evaluation.interpolate.mix")
    return cfg, results


def stage1_checkpoint(run_dir: Path, results: dict) -> str | None:
    """best.pt of the run's stage 1 (RoLI, LP-FT: results.json's `stage1`): where results.json says, else beside
    the run (a moved --out); None for a run without a stage 1 (RanLI)."""
    if not results.get("stage1"):
        return None
    recorded = Path(results["stage1"]["checkpoint"])
    for path in (recorded, run_dir.parent / recorded.parent.name / "best.pt"):
        if path.is_file():
            return str(path)
    raise UsageError(f"{run_dir}: its stage-1 checkpoint {recorded} is gone; theta_start is its head, so keep the "
                     "stage-1 folder beside the run")


def endpoints(run_dir: Path, cfg: Config, results: dict) -> tuple[Classifier, Splits, dict, dict]:
    """The model (holding best.pt), the data, and theta_start / theta_finetuned: the trained state of each."""
    model, splits = start_model(cfg, stage1_checkpoint(run_dir, results))
    keys = trained_keys(model)
    start = {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}
    best_path = run_dir / "best.pt"
    best = load_file(best_path)
    if best.get("lean"):
        check_backbone(model, best["backbone"], best_path)
    load_trained_state(model, best["model"], best_path)
    end = {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}
    return model, splits, start, end


def measure(model: nn.Module, state: dict, loader, attack, seed: int, early_stop: bool) -> tuple[float, float]:
    """Clean and robust accuracy (%) of `model` holding `state`, the attack's random starts seeded by `seed`."""
    model.load_state_dict(state, strict=False)
    cuda = [d.index or 0 for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        out = evaluate(model, loader, {"clean": None, "robust": attack}, early_stop=early_stop)
    return out["clean"]["acc"], out["robust"]["acc"]


def interpolate_run(run_dir: str | Path, alphas: list[float] | None = None, split: str = "val",
                    device: str = "auto") -> dict:
    """Measure theta(alpha) of a finished run on `split` (val) for each alpha, choose alpha there on robust accuracy,
    and measure the test split at the chosen alpha, 0 and 1; returns curve.json's dict (`rows`: one per alpha).

    Example:
        >>> curve = interpolate_run("runs/mnist_full_roli", alphas=[0, 0.5, 1])
        >>> curve["chosen_alpha"], curve["rows"][-1]["val_robust"]
    """
    if split == "test":
        raise UsageError("--split test: alpha must be chosen without the test split; choose val (or train)")
    run_dir, t0 = Path(run_dir), time.perf_counter()
    cfg, results = finished_run(run_dir)
    alphas = check_alphas(list(alphas), repr(alphas)) if alphas is not None else list(DEFAULT_ALPHAS)
    dev = pick_device(device)
    model, splits, start, end = endpoints(run_dir, cfg, results)
    model.to(dev)
    start, end = ({k: v.to(dev) for k, v in s.items()} for s in (start, end))
    attack = build_attack(cfg.eval.attack, cfg.threat, run_precision(cfg, dev, warn=False).eval)

    def at(alpha: float, name: str) -> tuple[float, float]:
        loader = sharded_loader(splits.split(name), cfg.data.eval_batch_size, shuffle=False)
        return measure(model, mix(start, end, alpha), loader, attack, cfg.run.seed, cfg.eval.early_stop)

    rows = []
    for alpha in tqdm(alphas, desc="alphas", disable=None):
        clean, robust = at(alpha, split)
        rows.append({"alpha": alpha, f"{split}_clean": clean, f"{split}_robust": robust,
                     "test_clean": None, "test_robust": None})
    chosen = choose_alpha(rows, f"{split}_robust")
    for r in rows:
        if r["alpha"] in (0.0, 1.0, chosen):
            r["test_clean"], r["test_robust"] = at(r["alpha"], "test")
    return _record(run_dir, cfg, results, rows, chosen, split, start, dev, time.perf_counter() - t0)


def _record(run_dir: Path, cfg: Config, results: dict, rows: list[dict], chosen: float, split: str, start: dict,
            dev: torch.device, secs: float) -> dict:
    """curve.json's dict: the settings, what was interpolated, the rows, the chosen alpha and a check at alpha 1."""
    last = rows[-1]
    best_val = results.get("best_val") or {}
    if split == "val" and best_val.get("clean") is not None and last["val_clean"] != best_val["clean"]:
        log.warning("%s: alpha 1 (best.pt) has validation clean accuracy %.2f%%, the run recorded %.2f%%: the "
                    "rebuilt model differs from the trained one (another roli version or device?)", run_dir,
                    last["val_clean"], best_val["clean"])
    return {
        "run_dir": str(run_dir), "method": results["method"], "init": results["init"], "split": split,
        "start": (f"stage-1 head of {results['stage1']['run_dir']}" if results.get("stage1")
                  else f"random head (RanLI, head_init {cfg.transfer.head_init}, seed {cfg.run.seed})"),
        "interpolated": {"tensors": len(start), "numbers": sum(v.numel() for v in start.values()),
                         "batchnorm_stats": "interpolated"},
        "selected_on": f"{split} robust accuracy ({cfg.eval.attack.name}); ties -> the larger alpha",
        "chosen_alpha": chosen, "chosen": next(r for r in rows if r["alpha"] == chosen), "rows": rows,
        "attack": to_dict(cfg.eval.attack), "threat": to_dict(cfg.threat), "seed": cfg.run.seed,
        # alpha 1 is best.pt: its clean accuracy is the run's selected epoch's (its robust one too, up to the
        # attack's random starts, which are seeded here but were not in training's validation)
        "check": {"alpha_1": {"clean": last[f"{split}_clean"], "robust": last[f"{split}_robust"]},
                  "run_best_val": best_val if split == "val" else None},
        "versions": versions(), "device": device_name(dev), "seconds": round(secs, 1),
    }
