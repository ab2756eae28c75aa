"""Seed aggregation for the report: runs whose configs differ only in `run.seed` and `run.name` form one group,
summarised as mean ± sample std over its seeds, with the per-seed numbers kept for statistics elsewhere.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict

SEED_SUFFIX = re.compile(r"-s\d+$")  # sweep cells: robust-full_finetune-ranli-s0
METRICS = ("test_clean", "test_pgd", "test_aa", "val_clean", "val_robust", "selected_epoch", "seconds")
# Config keys that never make a variant: the seed and name, the head init (a column, not a row), RoLI's stage 1
# (a RanLI run ignores it) and where the data lies or how it is loaded.
NOT_VARIANT = ("run.", "stage1.", "transfer.init", "data.root", "data.num_workers", "data.eval_batch_size")


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}: configs compared key by key."""
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dataset_label(cfg: dict) -> str:
    """The dataset a run transfers to: its name, plus the kept classes when `data.classes` is set."""
    data = cfg.get("data") or {}
    classes = data.get("classes")
    return f"{data['name']}[{','.join(map(str, classes))}]" if classes else str(data["name"])


def group_config(cfg: dict) -> dict:
    """The config without `run.seed` and `run.name`: equal for the seeds of one group."""
    run = {k: v for k, v in (cfg.get("run") or {}).items() if k not in ("seed", "name")}
    return {**cfg, "run": run}


def summary(values: list) -> dict:
    """Mean, sample std (ddof=1; None below two values) and n of the values that are not None."""
    vals = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) >= 2 else None, "n": len(vals)}


def groups(rows: list[dict]) -> list[dict]:
    """The report rows (see `report.collect`) grouped over seeds, in the order of their first run. Each group: its
    label, backbone, data (see `dataset_label`), method, init, variant, norm, eps, n, seeds, runs, `stats` (per
    metric of METRICS: mean, std, n) and `per_seed` ({seed, clean, pgd, aa or None, run, run_dir} per run)."""
    members: dict[str, list[dict]] = {}
    for r in rows:
        members.setdefault(json.dumps(group_config(r["config"]), sort_keys=True), []).append(r)
    out, labels = [], Counter()
    for runs in members.values():
        first = runs[0]
        label = SEED_SUFFIX.sub("", first["run"])
        labels[label] += 1
        out.append({
            "label": label if labels[label] == 1 else f"{label}#{labels[label]}",
            "backbone": first["backbone"], "data": first["dataset"], "method": first["method"], "init": first["init"],
            "variant": "", "per_init": "", "norm": first["norm"], "eps": first["eps"], "n": len(runs),
            "seeds": [r["seed"] for r in runs], "runs": [r["run"] for r in runs],
            "stats": {m: summary([r[m] for r in runs]) for m in METRICS},
            "per_seed": [{"seed": r["seed"], "clean": r["test_clean"], "pgd": r["test_pgd"], "aa": r["test_aa"],
                          "run": r["run"], "run_dir": r["run_dir"]} for r in runs],
            "config": group_config(first["config"]),
        })
    _name_variants(out)
    return out


def _shown(v: object) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def _name_variants(gs: list[dict]) -> None:
    """Within one (backbone, data, method), a group whose config differs from the others gets a `variant`: the
    differing keys (without "transfer.") and its values, for each key where its value is not the one most groups
    share (on a tie, every group names its value). A key that differs only between inits (a learning rate tuned
    per method x init, as the paper did) is no variant: it goes to the group's `per_init` ("train.lr=0.001")."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for g in gs:
        cells[g["backbone"], g["data"], g["method"]].append(g)
    for members in cells.values():
        flats = [{k: json.dumps(v, sort_keys=True) for k, v in flatten(g["config"]).items()
                  if not k.startswith(NOT_VARIANT)} for g in members]
        differ = sorted({k for f in flats for k in f if len({x.get(k) for x in flats}) > 1})
        by_init: dict[str, list[dict]] = defaultdict(list)
        for g, f in zip(members, flats):
            by_init[g["init"]].append(f)
        keys = [k for k in differ if any(len({x.get(k) for x in fs}) > 1 for fs in by_init.values())]
        for g, f in zip(members, flats):
            g["per_init"] = ", ".join(f"{k}={_shown(json.loads(f[k]) if k in f else None)}"
                                      for k in differ if k not in keys)
            parts = []
            for k in keys:
                counts = Counter(x.get(k) for x in flats)
                top = max(counts.values())
                if counts[f.get(k)] < top or list(counts.values()).count(top) > 1:
                    value = json.loads(f[k]) if k in f else None
                    parts.append(f"{k.removeprefix('transfer.')}={_shown(value)}")
            g["variant"] = ", ".join(parts)
