"""Evaluation suites (`quick`, `full`, `sweep`) over a DataLoader, with the sanity checks, settings and versions.

quick = clean + PGD-10; full = clean + FGSM + PGD-10 + AutoAttack, plus the eps sweep and PGD-100 with 5 restarts
for the integrity flags (`roli.evaluation.integrity`: gradient-masking signals); sweep = clean + PGD over an eps
sweep (0, eps/4, eps/2, eps, 2 eps by default) plus one large eps, where accuracy should be ~0.

PGD and FGSM run under the suite's `precision` (default fp32) and stop attacking broken examples (`early_stop`,
exact: see `PGD.evaluate`); the clean accuracy comes from the first such attack's own clean pass. AutoAttack always
runs in fp32 on its own evaluator.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from roli.attacks import build_attack
from roli.config import AttackConfig, ThreatConfig, to_dict
from roli.evaluation.accuracy import accuracy
from roli.evaluation.autoattack import evaluate_autoattack
from roli.evaluation.checks import model_checks
from roli.evaluation.expected import expected_robustness
from roli.evaluation.integrity import integrity
from roli.evaluation.ordering import check_ordering, check_sweep
from roli.precision import FP32, Precision

log = logging.getLogger(__name__)

SWEEP_FACTORS = (0.0, 0.25, 0.5, 1.0, 2.0)
# A "large" eps per norm: in L-inf 0.5 lets every pixel reach 0.5, i.e. every image can become the same grey
# image; the L2 ball of radius 0.5 * sqrt(dims) contains that move too. Accuracy there should be ~0.
LARGE_EPS: dict[str, Callable[[torch.Tensor], float]] = {
    "linf": lambda x: 0.5,
    "l2": lambda x: 0.5 * math.sqrt(x[0].numel()),
}


@dataclass(frozen=True)
class Suite:
    """A named evaluation: which results it reports, in order, whether it adds the eps sweep, and whether it
    computes the integrity flags (running the `pgd100` probe for them: its number goes to `probes`, not `results`,
    so `results` keeps the reported attacks)."""

    attacks: tuple[str, ...]  # result names, each a key of the `configs` passed to run_suite ("clean" = None)
    sweep: bool = False
    integrity: bool = False


SUITES: dict[str, Suite] = {
    "quick": Suite(("clean", "pgd")),
    "full": Suite(("clean", "fgsm", "pgd", "autoattack"), sweep=True, integrity=True),
    "aa": Suite(("clean", "fgsm", "pgd", "autoattack")),  # full without the sweep and the masking probes
    "sweep": Suite(("clean",), sweep=True),
}


def _attacked(model: nn.Module, loader: DataLoader, cfg: AttackConfig | None, threat: ThreatConfig,
              state: Path | None, precision: Precision = FP32, early_stop: bool = True) -> dict:
    if cfg is None:
        return accuracy(model, loader, None, desc="clean", precision=precision)  # torch.inference_mode inside
    return accuracy(model, loader, build_attack(cfg, threat, precision), desc=cfg.name, early_stop=early_stop)


def _autoattack(model: nn.Module, loader: DataLoader, cfg: AttackConfig, threat: ThreatConfig,
                state: Path | None, precision: Precision = FP32, early_stop: bool = True) -> dict:
    """AutoAttack's own evaluator (fp32; it already attacks only the points still robust)."""
    res = evaluate_autoattack(model, loader, cfg, threat, state_path=state)
    res.pop("robust")  # per-point flags stay in the state file
    return res


# attack name -> how it is evaluated over a loader (default: per-batch x_adv, then accuracy)
EVALUATORS: dict[str, Callable[..., dict]] = {"autoattack": _autoattack}


def scaled(cfg: AttackConfig, threat: ThreatConfig, eps: float) -> tuple[AttackConfig, ThreatConfig]:
    """The same PGD at another eps, with the step size scaled to keep the same step/eps ratio."""
    ratio = cfg.step_size / threat.eps if threat.eps > 0 else 2.5 / cfg.steps
    return (dataclasses.replace(cfg, step_size=ratio * eps if eps > 0 else cfg.step_size),
            dataclasses.replace(threat, eps=eps))


def eps_sweep(model: nn.Module, loader: DataLoader, cfg: AttackConfig, threat: ThreatConfig,
              factors: Sequence[float] = SWEEP_FACTORS, large_eps: float | None = None, seed: int = 0, *,
              precision: Precision = FP32, early_stop: bool = True) -> list[dict]:
    """Accuracy (%) under PGD `cfg` at threat.eps * factor for each factor, plus one large eps; sorted by eps."""
    if large_eps is None:
        large_eps = LARGE_EPS[threat.norm](next(iter(loader))[0])
    points = []
    for eps in sorted({threat.eps * f for f in factors} | {large_eps}):
        torch.manual_seed(seed)
        atk, atk_threat = scaled(cfg, threat, eps)
        res = accuracy(model, loader, build_attack(atk, atk_threat, precision), desc=f"eps {eps:.4g}",
                       early_stop=early_stop)
        points.append({"eps": eps, "acc": res["acc"], "n": res["n"], "step_size": atk.step_size,
                       "seconds": res["seconds"], "large": eps == large_eps and eps > threat.eps * max(factors)})
    return points


def run_suite(model: nn.Module, loader: DataLoader, suite: Suite, configs: Mapping[str, AttackConfig | None],
              threat: ThreatConfig, aa_state: str | Path | None = None, seed: int = 0, sweep_factors: Sequence[float] = SWEEP_FACTORS,
              *, precision: Precision = FP32, early_stop: bool = True) -> dict:
    """Run a suite; every attack starts from `torch.manual_seed(seed)`, so its number does not depend on the suite.

    `configs` maps result names to attack configs (None = clean); `configs["pgd"]` is the sweep's attack.
    `precision` (resolved, see `roli.precision.resolve`) autocasts PGD/FGSM and the clean pass (AutoAttack: fp32);
    `early_stop`: PGD/FGSM skip examples already broken (the same accuracy, see `PGD.evaluate`).
    """
    t0 = time.perf_counter()
    model = model.float()  # fp32 weights; `precision` is autocast around the forwards
    results, settings = {}, {}
    evaluator = {name: EVALUATORS.get(cfg.name if cfg is not None else "clean", _attacked)
                 for name, cfg in configs.items() if name in suite.attacks}
    # the clean accuracy comes from the first PGD-family attack's own clean pass, if the suite has one
    shares_clean = any(configs[n] is not None and evaluator[n] is _attacked for n in suite.attacks)
    for name in suite.attacks:
        cfg = configs[name]
        if cfg is None and shares_clean:
            continue
        torch.manual_seed(seed)
        results[name] = evaluator[name](model, loader, cfg, threat, Path(aa_state) if aa_state is not None else None,
                                        precision=precision, early_stop=early_stop)
        clean = results[name].pop("clean", None)
        if clean is not None and "clean" in suite.attacks and "clean" not in results:
            results["clean"] = clean
        if cfg is not None:  # AutoAttack reports its resolved settings (seed, targets, iterations)
            settings[name] = results[name].pop("settings", None) or to_dict(cfg)
    results = {name: results[name] for name in suite.attacks}
    x, y = next(iter(loader))
    device = next(model.parameters()).device
    batch = (x.to(device), y.to(device))  # one batch for the model checks and the prompt-path flag
    checks = model_checks(model, *batch)
    checks.append(check_ordering({k: v["acc"] for k, v in results.items()}))
    sweep = expected = None
    if suite.sweep:
        sweep = eps_sweep(model, loader, configs["pgd"], threat, sweep_factors, seed=seed, precision=precision,
                          early_stop=early_stop)
        settings["sweep"] = to_dict(configs["pgd"])
        checks += check_sweep(sweep, clean=results["clean"]["acc"] if "clean" in results else None)
        expected = expected_robustness(sweep, threat.eps) if any(p["eps"] == 0 for p in sweep) else None
    failed = [c.name for c in checks if not c.passed]
    if failed:
        log.warning("sanity checks failed: %s (see `checks` in the results)", ", ".join(failed))
    probes, flags = {}, None
    if suite.integrity:
        probes, flags = _integrity(model, loader, batch, configs, threat, results, sweep, seed, precision,
                                   early_stop)
        settings.update({k: to_dict(configs[k]) for k in probes})
    return {"threat": to_dict(threat), "attacks": settings, "results": results, "sweep": sweep,
            "expected_robustness": expected, "checks": [c.to_dict() for c in checks],
            **({"probes": probes, "integrity": flags} if suite.integrity else {}),
            "checks_passed": not failed, "precision": {**precision.to_dict(), "autoattack": "fp32"},
            "early_stop": early_stop, "seconds": round(time.perf_counter() - t0, 3)}


def _integrity(model: nn.Module, loader: DataLoader, batch: tuple[torch.Tensor, torch.Tensor],
               configs: Mapping[str, AttackConfig | None], threat: ThreatConfig, results: dict,
               sweep: list[dict] | None, seed: int, precision: Precision, early_stop: bool) -> tuple[dict, list[dict]]:
    """The probe attacks (`pgd100` when configured: PGD-100 with restarts) and the integrity flags."""
    probes = {}
    if configs.get("pgd100") is not None:
        torch.manual_seed(seed)
        probes["pgd100"] = _attacked(model, loader, configs["pgd100"], threat, None, precision, early_stop)
        probes["pgd100"].pop("clean", None)
    accs = {k: v["acc"] for k, v in {**results, **probes}.items()}
    n = next((v["n"] for v in results.values() if v.get("n")), None)
    return probes, [f.to_dict() for f in integrity(accs, sweep, n, model, batch)]


def library_versions() -> dict:
    """roli's recorded versions plus pyautoattack's, for an evaluation's JSON."""
    import pyautoattack

    from roli.version import versions

    return {**versions(), "pyautoattack": pyautoattack.__version__}
