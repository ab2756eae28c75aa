"""AutoAttack over a DataLoader: per-point worst case, accuracy after each sub-attack, and resumable state.

Each DataLoader batch is a chunk. A chunk's sub-attacks run one after another on the points still robust, exactly
as in AutoAttack's own loop (so the answer equals one AutoAttack call per chunk). After every (chunk, sub-attack)
the per-point robust flags are written atomically to a JSON state file; a killed run re-run with the same state
path skips what is done and, since every sub-attack is seeded, ends with the identical per-point result.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from roli.attacks.autoattack import AutoAttack, AutoAttackConfig
from roli.attacks.base import attack_mode
from roli.config import ThreatConfig, to_dict
from roli.distributed import broadcast, gather, world
from roli.errors import ResultsError, StateMismatch
from roli.files import atomic_write_json, read_json

log = logging.getLogger(__name__)
STATE_FORMAT = "roli-autoattack-state/1"


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_digest(model: nn.Module) -> str:
    """A short hash of every weight and buffer: a state file resumes only for the model that wrote it."""
    return _digest(*(t.float() for t in model.state_dict().values()))


class EvaluationState:
    """Per chunk: its data digest and the robust flags after 'clean' and after each finished sub-attack."""

    def __init__(self, path: Path | None, key: dict, seed: int | None) -> None:
        self.path, self.key, self.seed = path, key, seed
        self.chunks: list[dict] = []  # [{"digest": str, "flags": {"clean" | sub-attack: [bool, ...]}}]
        self.resumed = path is not None and path.is_file()
        if self.resumed:
            try:
                saved = read_json(path, "AutoAttack state file")
            except ResultsError as e:
                raise StateMismatch(f"{e}; delete it to evaluate from the start") from None
            if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
                raise StateMismatch(f"{path} is not a roli AutoAttack state file")
            if saved["key"] != key:
                raise StateMismatch(f"{path} was written for another model or attack configuration; delete it "
                                    "or pass another state path")
            self.seed, self.chunks = saved["seed"], saved["chunks"]  # a drawn seed (config seed null) is kept
            log.info("AutoAttack: resuming from %s (%d chunk(s) started)", path, len(self.chunks))

    def chunk(self, i: int, digest: str) -> dict:
        """Chunk i's record (started if i is the next one); StateMismatch if it was saved for other data."""
        if i == len(self.chunks):
            self.chunks.append({"digest": digest, "flags": {}})
        if self.chunks[i]["digest"] != digest:
            raise StateMismatch(f"chunk {i} holds other data than when {self.path} was written (shuffled loader, "
                                "other split or limit?)")
        return self.chunks[i]

    def save(self) -> None:
        """Write the state file atomically (nothing without a path)."""
        if self.path is None:
            return
        # atomic: a kill leaves the old or the new state, never half a file
        atomic_write_json(self.path, {"format": STATE_FORMAT, "key": self.key, "seed": self.seed,
                                      "chunks": self.chunks}, indent=None)


def _verify(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, cfg: ThreatConfig,
            broken: torch.Tensor) -> None:
    """AutoAttack's successes are re-checked here: inside the eps-ball and the box, and misclassified."""
    if not broken.any():
        return
    d = (x_adv[broken] - x[broken]).flatten(1)
    dist = d.abs().amax(1) if cfg.norm == "linf" else d.norm(dim=1)
    with torch.inference_mode():
        still_right = model(x_adv[broken]).argmax(1) == y[broken]
    if dist.max() > cfg.eps * (1 + 1e-4) + 1e-6 or x_adv.min() < 0 or x_adv.max() > 1 or still_right.any():
        raise RuntimeError(f"AutoAttack returned an invalid adversarial example (max {cfg.norm} distance "
                           f"{dist.max():.6f} for eps {cfg.eps}, {int(still_right.sum())} not misclassified)")


def _attack_chunk(attack: AutoAttack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sub: str,
                  robust: torch.Tensor, seed: int, n_classes: int) -> torch.Tensor:
    """One sub-attack on the chunk's robust points; returns the new robust flags of the whole chunk."""
    idx = robust.nonzero().flatten()
    if len(idx) == 0 or attack.threat.eps == 0:
        return robust.clone()
    x_adv = attack.run(model, x[idx], y[idx], [sub], seed, n_classes)
    with torch.inference_mode():
        broken = model(x_adv).argmax(1) != y[idx]
    _verify(model, x[idx], x_adv, y[idx], attack.threat, broken)
    out = robust.clone()
    out[idx[broken]] = False
    return out


def _whole_chunks(loader: DataLoader) -> DataLoader:
    """AutoAttack's chunks are whole batches (its result for a chunk depends on the chunk, not on who attacks it):
    a rank-sliced loader (roli.distributed) is turned back into the global batches."""
    shards = getattr(loader.batch_sampler, "shards", None)
    if not shards:
        return loader
    return DataLoader(loader.dataset, batch_size=shards[0].size, shuffle=False, num_workers=loader.num_workers)


def _own_chunks(loader: DataLoader, w) -> Iterator:
    """(global chunk index, chunk) for this rank's chunks (every size-th batch), without loading the others."""
    for i, batch in enumerate(loader.batch_sampler):
        if i % w.size == w.rank:
            yield i, loader.collate_fn([loader.dataset[k] for k in batch])


def evaluate_autoattack(model: nn.Module, loader: DataLoader, config: AutoAttackConfig, threat: ThreatConfig,
                        state_path: str | Path | None = None) -> dict:
    """AutoAttack robust accuracy (%) over `loader` (unshuffled), with the accuracy after each sub-attack.

    Returns a dict with `acc`, `after` ({"clean": .., sub-attack: ..} in %), `n`, `seconds`, `images_per_s`,
    `settings` (what AutoAttack ran with, with `substitutions`: the sub-attacks replaced or dropped for the class
    count, see `roli.attacks.autoattack.fit_to_classes`), `robust` (per-point flags, loader order) and `state`.
    """
    attack = AutoAttack(config, threat)
    cfg = attack.config
    device = next(model.parameters()).device
    with attack_mode(model), torch.inference_mode():  # the class count fixes which sub-attacks run
        n_classes = model(loader.dataset[0][0][None].to(device).float()).shape[1]
    subs, substitutions = attack.plan(n_classes)
    for s in substitutions:  # also in the result's settings
        log.info("AutoAttack on %d classes: %s %s (%s)", n_classes, s["attack"],
                 f"replaced by {s['by']}" if s["by"] else "dropped", s["why"])
    loader, w = _whole_chunks(loader), world()
    if w.distributed and state_path is not None:  # one resumable state per rank (its own chunks)
        state_path = Path(state_path).with_name(f"{Path(state_path).stem}.rank{w.rank}-of-{w.size}.json")
    key = {"model": model_digest(model), "config": to_dict(cfg), "threat": to_dict(threat), "attacks": subs}
    state = EvaluationState(Path(state_path) if state_path is not None else None, key, cfg.seed)
    if state.seed is None:
        state.seed = attack.resolve_seed()
    state.seed = seed = broadcast(state.seed)  # every rank attacks with rank 0's seed
    t0, done = time.perf_counter(), []  # done: (global chunk index, its flags)
    with attack_mode(model):
        for j, (i, (x, y)) in enumerate(_own_chunks(loader, w)):  # chunk-level shards
            x, y = x.to(device).float(), y.to(device)
            chunk = state.chunk(j, _digest(x, y))
            if "clean" not in chunk["flags"]:
                with torch.inference_mode():
                    chunk["flags"]["clean"] = (model(x).argmax(1) == y).tolist()
                state.save()
            robust = torch.tensor(chunk["flags"]["clean"], dtype=torch.bool, device=device)
            for sub in subs:
                if sub not in chunk["flags"]:
                    robust = _attack_chunk(attack, model, x, y, sub, robust, seed, n_classes)
                    chunk["flags"][sub] = robust.tolist()
                    state.save()
                    log.debug("AutoAttack chunk %d %s: %d/%d robust", i, sub, int(robust.sum()), len(y))
                robust = torch.tensor(chunk["flags"][sub], dtype=torch.bool, device=device)
            done.append((i, chunk["flags"]))
    secs = time.perf_counter() - t0
    flags_by_chunk = [f for _, f in sorted(gather(done))]  # every rank's chunks, in the loader's order
    n = sum(len(f["clean"]) for f in flags_by_chunk)
    after = {k: 100.0 * sum(sum(f[k]) for f in flags_by_chunk) / max(n, 1) for k in ("clean", *subs)}
    flags = [b for f in flags_by_chunk for b in f[subs[-1]]]
    result = {"acc": after[subs[-1]], "after": after, "n": n, "seconds": round(secs, 3),
              "images_per_s": round(n / secs, 1) if secs > 0 else None,
              "settings": attack.settings(n_classes, seed), "robust": flags,
              "state": str(state_path) if state_path is not None else None, "resumed": state.resumed}
    log.info("AutoAttack (%s, %s eps %.4g): %s", cfg.version, threat.norm, threat.eps,
             ", ".join(f"{k} {v:.2f}%" for k, v in after.items()))
    return result
