"""The findings spec: which groups a study's findings compare, at what significance level and margins, and the
free text around the generated numbers. Loaded strictly (a typo fails before any statistics are computed).

A spec (usually YAML, see `load_spec`)::

    robust: robust          # label prefix of the robust-backbone groups
    standard: standard      # label prefix of the standard-backbone groups
    methods: [linear_probe, full_finetune, lora, adapter, bitfit, vpt_deep]
    compare:                # reference quirks vs roli's defaults, paired by seed (variant - default)
      - {name: "adapter all-zero init (B2)", default: robust-adapter-ranli, variant: quirk-adapter_zero-ranli}
    alpha: 0.05             # significance level; confidence intervals are at 1 - alpha
    paper: {roli_gain_clean: 3.88, roli_gain_pgd: 2.44}   # the paper's average RoLI - RanLI gains (optional)
    margin: 10              # finding 1: "far less robust" means the robust backbone is >= margin points ahead
    equivalence_margin: 1   # findings 2 and 3: "matches"/"equivalent" = TOST within +-this many points
    controls: [ranli, ranli_matched]   # finding 3: RoLI against each of these inits (the first: the verdict)
    title: Paper findings   # optional text around the generated numbers (markdown): the heading, the study's
    intro: "..."            # set-up before the findings, a reading of each finding (discussion: {backbone,
    discussion: {roli: ...} # linear_vs_full, roli, quirks}: e.g. the likely reason one does not hold) and a
    closing: "..."          # closing section (e.g. the GPU plan); never numbers, which come from the runs
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from roli.errors import ConfigError

METRICS = ("clean", "pgd", "aa")
ROBUST_METRICS = ("pgd", "aa")
NAMES = {"clean": "clean", "pgd": "PGD", "aa": "AA"}
REQUIRED = {"robust": "robust: robust", "standard": "standard: standard",
            "methods": "methods: [linear_probe, full_finetune, lora]"}
DEFAULTS = {"compare": [], "alpha": 0.05, "paper": {}, "margin": 10.0, "equivalence_margin": 1.0, "controls": ["ranli"],
            "title": "Paper findings", "intro": "", "discussion": {}, "closing": ""}
SECTIONS = ("backbone", "linear_vs_full", "roli", "quirks")  # the result's parts; `discussion` keys name them
TEXTS = ("intro", "closing")  # free markdown around the generated findings (the study's set-up, its GPU plan)
PAPER_KEYS = tuple(f"roli_gain_{m}" for m in METRICS)
COMPARE_KEYS = ("name", "default", "variant")


def _bad(msg: str) -> ConfigError:
    return ConfigError(f"findings spec: {msg}")


def _text(value: Any, key: str, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(f"{key} must be a non-empty string (e.g. {example}), got {value!r}")
    return value


def _number(value: Any, key: str, low: float, high: float, example: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low < value < high:
        rng = f"between {low:g} and {high:g}" if math.isfinite(high) else f"above {low:g}"
        raise _bad(f"{key} must be a number {rng} (e.g. {example}), got {value!r}")
    return float(value)


def _methods(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _bad(f"methods must be a non-empty list (e.g. {REQUIRED['methods']}), got {value!r}")
    for m in value:
        _text(m, "every entry of methods", "lora")
    dup = sorted({m for m in value if value.count(m) > 1})
    if dup:
        raise _bad(f"methods lists {', '.join(dup)} twice; list each method once")
    return list(value)


def _controls(value: Any) -> list[str]:
    """Finding 3's control inits: a non-empty list of distinct names (group labels end in them)."""
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value) \
            or len(set(value)) != len(value) or "roli" in value:
        raise _bad(f"controls must list distinct inits RoLI is compared with (e.g. [ranli, ranli_matched]), got "
                   f"{value!r}")
    return list(value)


def _paper(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _bad(f"paper must be a mapping (e.g. paper: {{roli_gain_clean: 3.88}}), got {value!r}")
    for key in value:
        if key not in PAPER_KEYS:
            raise _bad(f"unknown key paper.{key}; use {', '.join(PAPER_KEYS)}")
    return {k: _number(v, f"paper.{k}", -math.inf, math.inf, f"{k}: 3.88") for k, v in value.items()}


def _compare(value: Any) -> list[dict[str, str]]:
    example = "compare: [{name: B2, default: robust-adapter-ranli, variant: quirk-adapter_zero-ranli}]"
    if not isinstance(value, list):
        raise _bad(f"compare must be a list (e.g. {example}), got {value!r}")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise _bad(f"compare[{i}] must be a mapping with keys name, default, variant (e.g. {example})")
        for key in entry:
            if key not in COMPARE_KEYS:
                raise _bad(f"unknown key compare[{i}].{key}; use name, default, variant")
        for key in COMPARE_KEYS:
            if key not in entry:
                raise _bad(f"compare[{i}] lacks {key!r}; give name, default and variant (e.g. {example})")
        out.append({k: _text(entry[k], f"compare[{i}].{k}", "robust-adapter-ranli") for k in COMPARE_KEYS})
    names = [e["name"] for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _bad(f"compare has the name {dup[0]!r} twice; give each comparison its own name")
    return out


def validate_spec(spec: Any) -> dict[str, Any]:
    """A checked findings spec with its defaults filled in, so a typo fails before any statistics are computed."""
    if not isinstance(spec, dict):
        raise _bad(f"expected a mapping with keys {', '.join(REQUIRED)}, got {type(spec).__name__}")
    known = [*REQUIRED, *DEFAULTS]
    for key in spec:
        if key == "ci_halfwidth":  # roli 0.2
            raise _bad("ci_halfwidth is gone: a 'matches' is now decided by an equivalence test (TOST); give "
                       "equivalence_margin: POINTS instead (e.g. equivalence_margin: 1)")
        if key not in known:
            raise _bad(f"unknown key {key!r}; use one of {', '.join(known)}")
    for key, example in REQUIRED.items():
        if key not in spec:
            raise _bad(f"missing key {key!r}; add it (e.g. {example})")
    out = {**DEFAULTS, **spec}
    out["robust"] = _text(out["robust"], "robust", REQUIRED["robust"])
    out["standard"] = _text(out["standard"], "standard", REQUIRED["standard"])
    if out["robust"] == out["standard"]:
        raise _bad(f"robust and standard are both {out['robust']!r}; give the two backbones different prefixes")
    out["methods"] = _methods(out["methods"])
    out["alpha"] = _number(out["alpha"], "alpha", 0, 1, "alpha: 0.05")
    out["margin"] = _number(out["margin"], "margin", 0, math.inf, "margin: 10")
    out["equivalence_margin"] = _number(out["equivalence_margin"], "equivalence_margin", 0, math.inf,
                                        "equivalence_margin: 1")
    out["controls"] = _controls(out["controls"])
    out["paper"] = _paper(out["paper"])
    out["compare"] = _compare(out["compare"])
    out["title"] = _text(out["title"], "title", "title: Paper findings")
    for key in TEXTS:
        if not isinstance(out[key], str):
            raise _bad(f"{key} must be text (markdown), got {out[key]!r}")
    if not isinstance(out["discussion"], dict):
        raise _bad(f"discussion must map {', '.join(SECTIONS)} to text, got {out['discussion']!r}")
    for key, text in out["discussion"].items():
        if key not in SECTIONS:
            raise _bad(f"unknown key discussion.{key}; use {', '.join(SECTIONS)}")
        _text(text, f"discussion.{key}", "the likely reason, in words")
    return out


def load_spec(path: str | Path) -> dict[str, Any]:
    """A findings spec read from a YAML file and checked (ConfigError names the file and the bad key)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"findings spec {path}: cannot read it ({type(e).__name__}: {e})".replace("\n", " ")) \
            from None
    try:
        return validate_spec(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
