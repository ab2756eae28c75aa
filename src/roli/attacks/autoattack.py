"""AutoAttack (Croce & Hein, ICML 2020, arXiv 2003.01690) through the authors' `pyautoattack` package.

An adapter, not a re-implementation: the package's AutoAttack runs every sub-attack. roli adds the run's threat
model as the only source of eps (the reference code silently used 4/255, protocol B6), target counts that fit the
dataset (min(9, C - 1); DLR-based sub-attacks replaced or dropped below 4 classes, recorded: `fit_to_classes`),
and a way to run one sub-attack at a time, which `roli.evaluation.autoattack` uses for per-attack accuracy and
resumable state.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from roli.attacks.base import ATTACKS, Attack
from roli.config import AttackConfig, ConfigError, ThreatConfig
from roli.precision import Precision

NORMS = {"linf": "Linf", "l2": "L2"}  # roli's norm names -> the package's
SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
# The DLR loss reads the 3rd-largest logit; its targeted form the 4th (pyautoattack's autopgd_base.dlr_loss*).
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}
# Why a DLR-based sub-attack is replaced (or dropped) below its class count: (sub-attack, replaced?) -> reason.
WHY = {
    ("apgd-t", True): "targeted DLR reads the 4th-largest logit (needs 4 classes); untargeted APGD-DLR keeps its "
                      "scale-invariant margin loss and attacks both other classes",
    ("apgd-t", False): "targeted DLR needs 4 classes; with 3 the untargeted APGD-DLR of this list already runs the "
                       "same loss, with 2 the only target is the other class (targeted = untargeted: APGD-CE, FAB-T)",
    ("apgd-dlr", False): "DLR reads the 3rd-largest logit (needs 3 classes); with 2, CE = softplus(margin), so "
                         "APGD-CE takes the margin loss's steps (FAB-T and Square cover saturated logits)",
}


@dataclass(frozen=True, kw_only=True)
class AutoAttackConfig(AttackConfig):
    """AutoAttack settings; norm and eps are the run's `threat`. Evaluation only: it cannot train."""

    name: str = "autoattack"
    version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attacks: tuple[str, ...] = ()  # custom only, run in this order, e.g. [apgd-ce, apgd-t]
    seed: int | None = None  # None = drawn from torch's generator (so `run.seed` fixes it)
    n_iter: int | None = None  # APGD/FAB iterations; None = the version's (100)
    apgd_restarts: int | None = None  # APGD-CE/DLR restarts; None = the version's (standard 1, plus/custom 5)
    n_target_classes: int | None = None  # APGD-T/FAB-T targets; None = min(9, classes - 1)
    square_queries: int | None = None  # None = the version's (5000)
    batch_size: int = 250  # AutoAttack's own batch inside a chunk

    def __post_init__(self) -> None:
        bad = [a for a in self.attacks if a not in SUB_ATTACKS]
        if bad:
            raise ValueError(f"unknown AutoAttack sub-attack(s) {bad}; choose from {list(SUB_ATTACKS)}")
        if (self.version == "custom") != bool(self.attacks):
            raise ValueError("give `attacks` (e.g. [apgd-ce, apgd-t]) exactly when version is custom")
        if len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"attacks lists a sub-attack twice: {list(self.attacks)}")
        for k in ("n_iter", "apgd_restarts", "n_target_classes", "square_queries"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1 or null")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


def _set_n_iter(aa: Any, n: int) -> None:
    from pyautoattack.autopgd_base import APGDAttack

    # APGD derives its step-size checkpoints from n_iter in __init__: take them from a fresh instance.
    fresh = APGDAttack(aa.model, n_iter=n, eps=aa.epsilon, norm=aa.norm)
    for apgd in (aa.apgd, aa.apgd_targeted):
        for k in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
            setattr(apgd, k, getattr(fresh, k))
    aa.fab.n_iter = n


def _set_targets(aa: Any, n: int) -> None:
    aa.apgd_targeted.n_target_classes = n
    aa.fab.n_target_classes = n


# config field -> how it is applied to a configured pyautoattack.AutoAttack (None fields keep the version's value)
OVERRIDES: dict[str, Callable[[Any, int], None]] = {
    "n_iter": _set_n_iter,
    "apgd_restarts": lambda aa, n: setattr(aa.apgd, "n_restarts", n),
    "n_target_classes": _set_targets,
    "square_queries": lambda aa, n: setattr(aa.square, "n_queries", n),
}


def fit_to_classes(attacks: list[str], n_classes: int) -> tuple[list[str], list[dict]]:
    """The sub-attacks that run on an `n_classes` model, and each substitution as {attack, by, why} (by None =
    dropped), so AutoAttack runs at any class count instead of failing or warning (AutoAttack issues #70, #79).

    A careful evaluator's choice, not a weaker attack: at >= 4 classes nothing changes. At 3, targeted DLR is
    undefined (its denominator reads the 4th-largest logit); APGD-T's point in the ensemble is a second, scale-
    invariant loss beside CE, which untargeted APGD-DLR (defined at 3 classes) gives while attacking both other
    classes, so APGD-T becomes APGD-DLR (dropped if the list already has it: the same seeded run again breaks
    nothing new). At 2, DLR itself is undefined, and targeted and untargeted coincide (one other class). There CE =
    softplus(margin), so APGD-CE's sign (L-inf) or normalised (L2) steps and its step-size rule, which only compares
    loss values, are exactly those of APGD on the margin, except where the softmax saturates (|margin| > ~88 in
    fp32); FAB-T and Square (margin loss, no gradients) cover that case. So APGD-T and APGD-DLR are dropped.
    """
    out, subs = [], []
    for a in attacks:
        if n_classes >= MIN_CLASSES.get(a, 2):
            out.append(a)
            continue
        by = "apgd-dlr" if (a == "apgd-t" and n_classes >= MIN_CLASSES["apgd-dlr"]
                            and "apgd-dlr" not in attacks) else None
        out += [by] if by else []
        subs.append({"attack": a, "by": by, "why": WHY[a, by is not None], "classes": n_classes})
    return out, subs


class _DropWarning(logging.Filter):
    """Drops pyautoattack's warning that 3 classes cannot use targeted DLR: its check says so whenever APGD-DLR
    runs at 3 classes, though only APGD-T uses targeted DLR (and roli never runs it below 4 classes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "not possible to use the targeted DLR loss" not in record.getMessage()


def _quiet_package_logger() -> None:
    """pyautoattack logs 'setting parameters for ... version' at INFO on every construction; roli builds one per
    (chunk, sub-attack). Keep its warnings (its own sanity checks) unless the user chose a level."""
    logger = logging.getLogger("auto-attack")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


@contextlib.contextmanager
def _keep_tracer_and_rng(device: torch.device) -> Iterator[None]:
    """pyautoattack re-seeds torch's global generator and clears any sys.settrace hook (its dynamic-defense
    check); neither should leak into the caller."""
    tracer, logger, drop = sys.gettrace(), logging.getLogger("auto-attack"), _DropWarning()
    logger.addFilter(drop)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        sys.settrace(tracer)
        logger.removeFilter(drop)


@ATTACKS.register("autoattack")
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein, arXiv 2003.01690): the parameter-free ensemble APGD-CE, APGD-T, FAB-T and Square
    (`version: standard`), run by the authors' `pyautoattack` package on [0,1] inputs with the run's `threat`.

    `attack(model, x, y)` runs the whole configured AutoAttack on the batch and returns AA's x_adv
    (clean x where no sub-attack succeeded). For DataLoaders use `roli.evaluation.autoattack.evaluate_autoattack`
    (per-sub-attack accuracy, resumable). Any class count >= 2 works: below 4 classes the DLR-based sub-attacks are
    replaced or dropped (`fit_to_classes`; the results' `substitutions` say which and why). It always runs in fp32 (the package's own forwards; its checks and DLR
    loss assume fp32 logits). Evaluation only: it cannot be the training `attack`.

    Example:
        After training: ``roli eval --checkpoint RUN/best.pt --suite full`` (clean, FGSM, PGD-10, AutoAttack), or
        ``--attack autoattack --aa version=custom attacks=[apgd-ce,apgd-t]``. Python:

        >>> aa = roli.make_attack("autoattack", eps=8/255, version="custom", attacks=["apgd-ce", "apgd-t"])
        >>> x_adv = aa(model, x, y)
    """

    config_cls = AutoAttackConfig

    def __init__(self, config: AutoAttackConfig, threat: ThreatConfig, precision: Precision | None = None) -> None:
        if precision is not None and precision.used != "fp32":
            raise ConfigError(f"AutoAttack runs in fp32 only, not {precision.used}: evaluate it with precision fp32")
        super().__init__(config, threat)
        _quiet_package_logger()

    def resolve_seed(self) -> int:
        """The configured seed, else one drawn from torch's generator (so `run.seed` fixes it)."""
        cfg = self.config
        return cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())

    def sub_attacks(self) -> list[str]:
        """The sub-attacks in AutoAttack's order for the configured version."""
        import pyautoattack

        cfg = self.config
        if cfg.version == "custom":
            return list(cfg.attacks)
        return list(pyautoattack.AutoAttack(nn.Identity(), norm=NORMS[self.threat.norm], eps=self.threat.eps,
                                            version=cfg.version, seed=0).attacks_to_run)

    def target_classes(self, n_classes: int) -> int:
        """APGD-T/FAB-T's number of target classes: the configured one, else min(9, n_classes - 1)."""
        n = self.config.n_target_classes or min(9, n_classes - 1)
        if n > n_classes - 1:
            raise ConfigError(f"n_target_classes={n} but the model has only {n_classes} classes ({n_classes - 1} "
                             f"possible targets): set n_target_classes <= {n_classes - 1}, or null for min(9, C - 1)")
        return n

    def build(self, model: nn.Module, n_classes: int, seed: int, device: torch.device) -> Any:
        """A fresh, configured pyautoattack.AutoAttack (fresh each time: the package mutates FAB's restarts)."""
        import pyautoattack

        cfg = self.config
        aa = pyautoattack.AutoAttack(model, norm=NORMS[self.threat.norm], eps=self.threat.eps, version=cfg.version,
                                     seed=seed,
                                     device=device, attacks=list(cfg.attacks) if cfg.version == "custom" else None)
        aa.verbose = False  # progress goes to roli's log, per sub-attack and chunk
        overrides = {**{k: getattr(cfg, k) for k in OVERRIDES}, "n_target_classes": self.target_classes(n_classes)}
        for key, value in overrides.items():
            if value is not None:
                OVERRIDES[key](aa, value)
        return aa

    def plan(self, n_classes: int) -> tuple[list[str], list[dict]]:
        """The sub-attacks that run on an `n_classes` model and the substitutions (see `fit_to_classes`); a
        ConfigError first if an explicit n_target_classes exceeds n_classes - 1."""
        self.target_classes(n_classes)
        return fit_to_classes(self.sub_attacks(), n_classes)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: list[str], seed: int,
            n_classes: int) -> torch.Tensor:
        """Run `attacks` in order on (x, y) with AutoAttack's own loop; returns its x_adv (x where not broken)."""
        aa = self.build(model, n_classes, seed, x.device)
        aa.attacks_to_run = list(attacks)  # the package does the same in run_standard_evaluation_individual
        with _keep_tracer_and_rng(x.device):
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=self.config.batch_size)
        return x_adv

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every configured sub-attack in order on the batch (eps 0: x itself)."""
        if self.threat.eps == 0:
            return x.clone()
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        return self.run(model, x, y, self.plan(n_classes)[0], self.resolve_seed(), n_classes)

    def settings(self, n_classes: int, seed: int) -> dict:
        """What AutoAttack actually ran with, for the results JSON."""
        import pyautoattack

        aa = self.build(nn.Identity(), n_classes, seed, torch.device("cpu"))
        cfg = self.config
        attacks, substitutions = self.plan(n_classes)
        return {"name": cfg.name, "version": cfg.version, "attacks": attacks, "substitutions": substitutions,
                "classes": n_classes, "norm": self.threat.norm,
                "eps": self.threat.eps, "seed": seed, "n_iter": aa.apgd.n_iter, "apgd_restarts": aa.apgd.n_restarts,
                "n_target_classes": aa.apgd_targeted.n_target_classes, "square_queries": aa.square.n_queries,
                "batch_size": cfg.batch_size, "library": f"pyautoattack {pyautoattack.__version__}"}
