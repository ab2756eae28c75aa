"""Clean and robust accuracy over a DataLoader, in one pass per attack.

Per batch: one clean forward (no gradients, under the attack's precision) gives the clean verdicts; the attack then
starts from them (`Attack.evaluate`): with `early_stop` it never attacks an example that is already misclassified
and stops attacking one as soon as it is broken, and it reports its per-example verdicts itself, so x_adv is not
classified again. An example counts as robust when its clean input and every point the attack tried are classified
correctly (a misclassified clean input is a point of the ball, so it is never robust).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from roli.attacks.base import Attack
from roli.distributed import sum_over_ranks, world
from roli.precision import FP32, Precision

log = logging.getLogger(__name__)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _rate(n: int, secs: float) -> float | None:
    return round(n / secs, 1) if secs > 0 else None


def accuracy(model: nn.Module, loader: DataLoader, attack: Attack | None = None, desc: str = "eval", *,
             precision: Precision | None = None, early_stop: bool = True, predictions: dict | None = None) -> dict:
    """Top-1 accuracy (in %), plus counts, seconds and images/s.

    `predictions` (a dict, filled in; one process only): the per-example verdicts in loader order, as numpy arrays
    `label`, `clean_pred` and (with an attack) `robust`, so two runs can be compared image by image (paired tests
    over test images).

    Without an attack: clean accuracy under `precision` (default fp32). With one: robust accuracy under the attack's
    own precision, with `clean` (the same pass's clean accuracy: acc, n, seconds of the clean forwards) and
    `early_stop` (whether the attack skipped broken examples; see `Attack.evaluate`). `seconds` of an attack excludes
    the clean forwards, so clean + attack seconds is the pass's time.
    """
    if attack is not None:
        if precision is not None and precision != attack.precision:
            raise ValueError(f"precision {precision.used} differs from the attack's {attack.precision.used}: the "
                             "clean pass runs under the attack's precision")
        precision = attack.precision
    precision = precision or FP32
    device, n, t0 = _device(model), 0, time.perf_counter()
    correct = robust = 0
    clean_secs = 0.0
    was_training = model.training
    shards = getattr(loader.batch_sampler, "shards", None) if world().distributed else None
    model.eval()
    kept: dict[str, list] = {"label": [], "clean_pred": [], "robust": []}
    try:
        for i, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=None)):
            x, y = x.to(device), y.to(device)
            t_clean = time.perf_counter()
            with torch.no_grad() if attack is not None else torch.inference_mode(), precision.autocast():
                logits = model(x)
            clean_secs += time.perf_counter() - t_clean
            correct += (logits.argmax(1) == y).sum().item()
            kept["label"].append(y.cpu())
            kept["clean_pred"].append(logits.argmax(1).cpu())
            if attack is not None:
                logits = logits if logits.dtype == x.dtype else logits.to(torch.promote_types(logits.dtype, x.dtype))
                verdict = attack.evaluate(model, x, y, early_stop=early_stop, clean_logits=logits,
                                          shard=shards[i] if shards else None).robust
                robust += verdict.sum().item()
                kept["robust"].append(verdict.cpu())
            n += len(y)
    finally:
        model.train(was_training)
    correct, robust, n = (int(v) for v in sum_over_ranks([correct, robust, n], device))  # exact counts over ranks
    if predictions is not None and not world().distributed:
        predictions.update({k: torch.cat(v).numpy() for k, v in kept.items() if v})
    secs = time.perf_counter() - t0
    if not sys.stderr.isatty():  # no progress bar outside a terminal (tqdm hides itself): one line per evaluation
        log.info("%s: clean %.2f%%%s on %d images (%.1f s)", desc, 100.0 * correct / max(n, 1),
                 f", robust {100.0 * robust / max(n, 1):.2f}%" if attack is not None else "", n, secs)
    if attack is None:
        return {"acc": 100.0 * correct / max(n, 1), "n": n, "seconds": round(secs, 3), "images_per_s": _rate(n, secs)}
    attack_secs = secs - clean_secs
    return {"acc": 100.0 * robust / max(n, 1), "n": n, "seconds": round(attack_secs, 3),
            "images_per_s": _rate(n, attack_secs), "early_stop": early_stop,
            "clean": {"acc": 100.0 * correct / max(n, 1), "n": n, "seconds": round(clean_secs, 3),
                      "images_per_s": _rate(n, clean_secs)}}


def evaluate(model: nn.Module, loader: DataLoader, attacks: Mapping[str, Attack | None], *,
             precision: Precision | None = None, early_stop: bool = True,
             predictions: dict | None = None) -> dict[str, dict]:
    """`{"clean": None, "pgd": PGD(...)}` -> per-attack accuracy dicts, in the given order.

    "clean" is not a separate pass when an attack is given: it is the first attack's own clean forward (under that
    attack's precision). `precision` applies to a clean-only evaluation. `early_stop`: see `Attack.evaluate`.
    `predictions`: filled with the first attack's per-example verdicts (see `accuracy`).

    Example:
        >>> attacks = {"clean": None, "pgd": roli.make_attack("pgd", eps=0.1, steps=10, step_size=0.025)}
        >>> results = roli.evaluate(model, loader, attacks)  # loader: (x in [0,1], y) batches, unshuffled
        >>> results["pgd"]["acc"], results["clean"]["acc"]  # top-1 accuracy in %
    """
    out: dict[str, dict] = {}
    for name, atk in attacks.items():
        if atk is not None:
            out[name] = accuracy(model, loader, atk, desc=name, early_stop=early_stop,
                                 predictions=predictions if not out else None)
    clean = next((r["clean"] for r in out.values()), None)
    for r in out.values():
        r.pop("clean")
    if any(atk is None for atk in attacks.values()) and clean is None:
        clean = accuracy(model, loader, None, desc="clean", precision=precision)
    return {name: out[name] if atk is not None else dict(clean) for name, atk in attacks.items()}
