"""Whether the paper's three findings (Hua et al., CVPR 2024) hold in a study, with numbers and significance, plus
paired comparisons of the reference code's quirks against roli's defaults.

Input: `groups`, a group label (f"{prefix}-{method}-{init}", e.g. "robust-full_finetune-ranli") mapped to per-seed
records {"seed": int, "clean": float, "pgd": float, "aa": float | None} (test accuracies in %), and a `spec`
(usually a YAML file, see `load_spec`):

    robust: robust          # label prefix of the robust-backbone groups
    standard: standard      # label prefix of the standard-backbone groups
    methods: [linear_probe, full_finetune, lora, adapter, bitfit, vpt_deep]
    compare:                # reference quirks vs roli's defaults, paired by seed (variant - default)
      - {name: "adapter all-zero init (B2)", default: robust-adapter-ranli, variant: quirk-adapter_zero-ranli}
    alpha: 0.05             # significance level; confidence intervals are at 1 - alpha
    paper: {roli_gain_clean: 3.88, roli_gain_pgd: 2.44}   # the paper's average RoLI - RanLI gains (optional)
    margin: 10              # finding 1: "far less robust" means the robust backbone is >= margin points ahead
    ci_halfwidth: 3         # finding 2: a "matches" whose CI half-width exceeds this is called underpowered
    title: Paper findings   # optional text around the generated numbers (markdown): the heading, the study's
    intro: "..."            # set-up before the findings, a reading of each finding (discussion: {backbone,
    discussion: {roli: ...} # linear_vs_full, roli, quirks}: e.g. the likely reason one does not hold) and a
    closing: "..."          # closing section (e.g. the GPU plan); never numbers, which come from the runs

Findings:
  1. `finding_backbone`: with a standard backbone, PEFT under adversarial training stays far less robust than with a
     robust one (Welch t-test per method, RanLI).
  2. `finding_linear_vs_full`: with a robust backbone, linear probing matches or beats full finetuning (RanLI).
  3. `finding_roli`: RoLI improves clean and robust accuracy over RanLI (paired by seed per method, then pooled
     over methods with a paired t-test and an exact sign-flip permutation test).
  4. `compare_quirks`: each `compare` pair, paired by seed.

`findings(groups, spec)` returns one JSON-serialisable dict (non-finite numbers become null); `sections(result)`
lays it out as data (headings, tables of formatted cells, rule, sentence, discussion) and `markdown(result)` renders
that with one plain sentence per finding (report_html renders the same sections as HTML). A missing group never crashes: its finding (or method row) says
"not run" and names the missing groups. AutoAttack statistics appear only when every seed involved has an AA number.
Decisions use the t-test's p-value; the sign-flip p-value is shown beside it, and a disagreement is pointed out.
Pure numpy + scipy: no torch import.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from roli.errors import ConfigError, ResultsError

FORMAT = "roli-findings/1"
METRICS = ("clean", "pgd", "aa")
ROBUST_METRICS = ("pgd", "aa")
NAMES = {"clean": "clean", "pgd": "PGD", "aa": "AA"}
NOT_PEFT = ("full_finetune", "linear_probe")  # reported in finding 1, but not PEFT
LINEAR, FULL = "linear_probe", "full_finetune"
EXACT_MAX = 20  # the sign-flip test enumerates all 2^n patterns up to this n
DRAWS = 100_000  # ... and draws this many seeded random sign patterns above it
PERM_SEED = 0
REQUIRED = {"robust": "robust: robust", "standard": "standard: standard",
            "methods": "methods: [linear_probe, full_finetune, lora]"}
DEFAULTS = {"compare": [], "alpha": 0.05, "paper": {}, "margin": 10.0, "ci_halfwidth": 3.0,
            "title": "Paper findings", "intro": "", "discussion": {}, "closing": ""}
SECTIONS = ("backbone", "linear_vs_full", "roli", "quirks")  # the result's parts; `discussion` keys name them
TEXTS = ("intro", "closing")  # free markdown around the generated findings (the study's set-up, its GPU plan)
PAPER_KEYS = tuple(f"roli_gain_{m}" for m in METRICS)
COMPARE_KEYS = ("name", "default", "variant")
ROLI_WORDS = ("holds", "not significant", "reversed")
QUIRK_WORDS = ("variant higher", "not significant", "variant lower")


# ---------------------------------------------------------------------------------------------------- spec


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
    out["ci_halfwidth"] = _number(out["ci_halfwidth"], "ci_halfwidth", 0, math.inf, "ci_halfwidth: 3")
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


# ---------------------------------------------------------------------------------------------------- groups


def label(prefix: str, method: str, init: str) -> str:
    """A group's label, f"{prefix}-{method}-{init}": the one naming rule every finding looks groups up by."""
    return f"{prefix}-{method}-{init}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)


def _check_groups(groups: Any) -> dict[str, dict[int, dict]]:
    """Each group's records keyed by seed; ResultsError for a record roli cannot read (a missing group is fine)."""
    if not isinstance(groups, dict):
        raise ResultsError(f"findings: groups must map a group label to a list of per-seed records, got "
                           f"{type(groups).__name__}")
    out: dict[str, dict[int, dict]] = {}
    for name, recs in groups.items():
        if not isinstance(recs, list):
            raise ResultsError(f"findings: group {name!r} must be a list of per-seed records, got {type(recs).__name__}")
        by_seed: dict[int, dict] = {}
        for rec in recs:
            seed = rec.get("seed") if isinstance(rec, dict) else None
            if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
                raise ResultsError(f"findings: group {name!r} has a record without an integer seed: {rec!r}")
            for key in ("clean", "pgd"):
                if not _is_number(rec.get(key)):
                    raise ResultsError(f"findings: group {name!r} seed {seed}: {key} must be a finite number, "
                                       f"got {rec.get(key)!r}")
            if seed in by_seed:
                raise ResultsError(f"findings: group {name!r} has seed {seed} twice; keep one record per seed")
            by_seed[int(seed)] = rec
        if by_seed:
            out[str(name)] = by_seed
    return out


def _aa_note(*parts: tuple[dict[int, dict], list[int] | None]) -> str | None:
    """Why AA is left out when some, but not all, of the seeds involved have an AA number."""
    seeds = [(recs, list(recs) if ss is None else ss) for recs, ss in parts]
    have = [_is_number(recs[s].get("aa")) for recs, ss in seeds for s in ss]
    return "AA left out: not every seed has an AA number" if any(have) and not all(have) else None


def _has(recs: dict[int, dict], metric: str, seeds: list[int] | None = None) -> bool:
    """Every seed involved has a finite number for `metric` (AA is optional per record)."""
    seeds = list(recs) if seeds is None else seeds
    return bool(seeds) and all(_is_number(recs[s].get(metric)) for s in seeds)


def _vals(recs: dict[int, dict], metric: str, seeds: list[int] | None = None) -> np.ndarray:
    seeds = sorted(recs) if seeds is None else seeds
    return np.array([float(recs[s][metric]) for s in seeds])


# ---------------------------------------------------------------------------------------------------- statistics


def _f(x: Any) -> float | None:
    """A plain float, or None for a missing or non-finite number (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _zero(se: float, *samples: np.ndarray) -> bool:
    """A standard error that is only rounding noise (e.g. 48.7 + 2.0 - 48.7 for every seed): no t-test on it."""
    scale = max([1.0, *(float(np.max(np.abs(x))) for x in samples)])
    return se <= 1e-9 * scale


def welch(a, b, alpha: float = 0.05) -> dict[str, Any]:
    """Welch t-test and CI of mean(a) - mean(b): independent runs (two backbones/methods) need not share a spread."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    out = {"n_a": na, "n_b": nb, "mean_a": _f(a.mean()), "mean_b": _f(b.mean()),
           "std_a": _f(a.std(ddof=1)) if na > 1 else None, "std_b": _f(b.std(ddof=1)) if nb > 1 else None,
           "diff": _f(a.mean() - b.mean()), "t": None, "df": None, "p": None, "ci": None, "ci_level": 1 - alpha,
           "note": None}
    if min(na, nb) < 2:
        out["note"] = "n=1, no test"
        return out
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    if _zero(se, a, b):
        out["note"] = "zero variance, no test"
        return out
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = (a.mean() - b.mean()) / se
    half = stats.t.ppf(1 - alpha / 2, df) * se
    out.update(t=_f(t), df=_f(df), p=_f(2 * stats.t.sf(abs(t), df)),
               ci=[_f(a.mean() - b.mean() - half), _f(a.mean() - b.mean() + half)])
    return out


def sign_flip(d, draws: int = DRAWS, seed: int = PERM_SEED) -> float:
    """Two-sided sign-flip permutation p of mean(d) = 0 (exact up to n=20): checks the t-test without normality."""
    d = np.asarray(d, float)
    if len(d) == 0:
        return 1.0
    obs = abs(d.sum())
    tol = 1e-9 * max(1.0, obs)
    if len(d) <= EXACT_MAX:
        sums = np.zeros(1)
        for x in d:  # the sums of all 2^n sign patterns, built by doubling
            sums = np.concatenate([sums + x, sums - x])
        return float(np.mean(np.abs(sums) >= obs - tol))
    rng = np.random.default_rng(seed)
    hits, left = 0, draws
    while left:
        k = min(left, 10_000)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, len(d)))
        hits += int(np.sum(np.abs(signs @ d) >= obs - tol))
        left -= k
    return (hits + 1) / (draws + 1)


def _diff_stats(d, alpha: float) -> dict[str, Any]:
    """Mean, std, SE, one-sample t-test against 0, CI and sign-flip p of paired differences."""
    d = np.asarray(d, float)
    n = len(d)
    out = {"n": n, "mean": _f(d.mean()) if n else None, "std": _f(d.std(ddof=1)) if n > 1 else None,
           "se": None, "t": None, "df": None, "p": None, "ci": None, "ci_level": 1 - alpha,
           "sign_flip_p": _f(sign_flip(d)) if n else None, "sign_flip": "exact" if n <= EXACT_MAX else "monte carlo",
           "note": None}
    if n < 2:
        out["note"] = "n=1, no test" if n else "no paired seeds"
        return out
    se = d.std(ddof=1) / math.sqrt(n)
    out["se"] = _f(se)
    if _zero(se, d):
        out["note"] = "zero variance, no test"
        return out
    t = d.mean() / se
    half = stats.t.ppf(1 - alpha / 2, n - 1) * se
    out.update(t=_f(t), df=n - 1, p=_f(2 * stats.t.sf(abs(t), n - 1)), ci=[_f(d.mean() - half), _f(d.mean() + half)])
    if n == 2:
        out["note"] = "n=2: the t-test has 1 df"
    return out


def paired(a, b, alpha: float = 0.05) -> dict[str, Any]:
    """Paired t-test (+ sign-flip) of a - b over matched seeds: pairing removes the seed-to-seed spread."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired: a and b must have the same length, got {len(a)} and {len(b)}")
    return _diff_stats(a - b, alpha)


def verdict(s: dict[str, Any], alpha: float, words: tuple[str, str, str] = ROLI_WORDS) -> str:
    """Three-way call on a difference (significantly up / not significant / significantly down, or "untested")."""
    if s.get("p") is None:
        return "untested"
    mean = s["mean"] if "mean" in s else s["diff"]
    if s["p"] < alpha:
        return words[0] if mean > 0 else words[2]
    return words[1]


# ---------------------------------------------------------------------------------------------------- findings


def _missing(groups: dict, *labels: str) -> list[str]:
    return [g for g in labels if g not in groups]


def _pair_seeds(x: dict[int, dict], y: dict[int, dict]) -> tuple[list[int], list[int]]:
    """Seeds present in both groups, and those present in only one (left out of the pairing)."""
    return sorted(set(x) & set(y)), sorted(set(x) ^ set(y))


def _paired_metrics(x: dict[int, dict], y: dict[int, dict], alpha: float, words) -> dict[str, Any]:
    """x - y paired by seed for clean, PGD and (when every paired seed has it in both groups) AA."""
    seeds, unpaired = _pair_seeds(x, y)
    out = {"seeds": seeds, "unpaired_seeds": unpaired, "metrics": {}, "aa_note": _aa_note((x, seeds), (y, seeds))}
    for metric in METRICS:
        if not seeds or (metric == "aa" and not (_has(x, "aa", seeds) and _has(y, "aa", seeds))):
            continue
        s = paired(_vals(x, metric, seeds), _vals(y, metric, seeds), alpha)
        s["verdict"] = verdict(s, alpha, words)
        out["metrics"][metric] = s
    return out


def finding_backbone(groups: dict, spec: dict) -> dict[str, Any]:
    """Finding 1: does a standard backbone leave adversarial PEFT far less robust than a robust one (RanLI)?"""
    spec, groups = validate_spec(spec), _check_groups(groups)
    alpha, margin = spec["alpha"], spec["margin"]
    rule = (f"holds when, for every PEFT method run, the robust backbone is ahead by >= {margin:g} points in every "
            f"robust metric reported (PGD, and AA where every seed has one), with Welch p < {alpha:g} where testable "
            "(>= 2 seeds on both sides)")
    rows, missing = [], []
    for m in spec["methods"]:
        std_l, rob_l = label(spec["standard"], m, "ranli"), label(spec["robust"], m, "ranli")
        row = {"method": m, "peft": m not in NOT_PEFT, "standard": std_l, "robust": rob_l,
               "missing": _missing(groups, std_l, rob_l), "metrics": {}, "large_margin": None, "aa_note": None}
        rows.append(row)
        if row["missing"]:
            missing += row["missing"]
            continue
        s, r = groups[std_l], groups[rob_l]
        row["aa_note"] = _aa_note((s, None), (r, None))
        for metric in ROBUST_METRICS:
            if metric == "aa" and not (_has(s, "aa") and _has(r, "aa")):
                continue
            w = welch(_vals(r, metric), _vals(s, metric), alpha)  # robust - standard
            w["large"] = w["diff"] >= margin and (w["p"] is None or w["p"] < alpha)
            row["metrics"][metric] = w
        row["large_margin"] = all(w["large"] for w in row["metrics"].values())
    ran = [r for r in rows if r["peft"] and not r["missing"]]
    status = "not run" if not ran else "holds" if all(r["large_margin"] for r in ran) else "does not hold"
    out = {"finding": "With a standard backbone, PEFT under adversarial training stays far less robust than with a "
                      "robust one.", "alpha": alpha, "rule": rule, "status": status, "methods": rows, "missing": missing}
    out["sentence"] = _sentence_backbone(out, ran, alpha, margin)
    return out


def _sentence_backbone(out: dict, ran: list[dict], alpha: float, margin: float) -> str:
    if not ran:
        return f"Not run: no PEFT method has both backbones (missing groups: {', '.join(out['missing']) or 'none'})."
    skipped = [r["method"] for r in out["methods"] if r["peft"] and r["missing"]]
    tail = f" (not run: {', '.join(skipped)})" if skipped else ""
    gaps = [r["metrics"]["pgd"]["diff"] for r in ran]
    ps = [r["metrics"]["pgd"]["p"] for r in ran]
    untested = [r["method"] for r in ran if r["metrics"]["pgd"]["p"] is None]
    tested = [p for p in ps if p is not None]
    sig = ("no test possible" if not tested else "every Welch p < 0.001" if max(tested) < 0.001
           else f"largest Welch {_p(max(tested))}")
    if untested:
        sig += f"; untested (n=1 or zero variance): {', '.join(untested)}"
    names = ", ".join(r["method"] for r in ran)
    if out["status"] == "holds":
        aa = [r["metrics"]["aa"]["diff"] for r in ran if "aa" in r["metrics"]]
        aa_part = f" and in AA by {_n(min(aa))} to {_n(max(aa))} ({len(aa)} of them)" if aa else ""
        return (f"Holds here: for every PEFT method run ({names}){tail}, the robust backbone is ahead in PGD accuracy "
                f"by {_n(min(gaps))} to {_n(max(gaps))} points{aa_part} (>= {margin:g} required; {sig}).")
    fails = []
    for r in ran:
        if not r["large_margin"]:
            bits = [f"{NAMES[k]} {_d(w['diff'])}, {_p(w['p'])}" for k, w in r["metrics"].items() if not w["large"]]
            fails.append(f"{r['method']} ({'; '.join(bits)})")
    return (f"Does not hold here: the robust backbone is not ahead by >= {margin:g} points with p < {alpha:g} for "
            f"{', '.join(fails)}{tail}.")


def finding_linear_vs_full(groups: dict, spec: dict) -> dict[str, Any]:
    """Finding 2: does linear probing match or beat full finetuning on the robust backbone (RanLI)?"""
    spec, groups = validate_spec(spec), _check_groups(groups)
    alpha, wide = spec["alpha"], spec["ci_halfwidth"]
    lp_l, ft_l = label(spec["robust"], LINEAR, "ranli"), label(spec["robust"], FULL, "ranli")
    rule = (f"per metric: 'beats' when linear probing is ahead with Welch p < {alpha:g}, 'does not hold' when full "
            f"finetuning is ahead with p < {alpha:g}, else 'matches'; a 'matches' whose {1 - alpha:.0%} CI of the "
            f"difference is wider than ±{wide:g} points is underpowered (no evidence either way). The finding holds "
            "when no metric is 'does not hold'.")
    out = {"finding": "With a robust backbone, linear probing can match or beat full finetuning (random init).",
           "alpha": alpha, "rule": rule, "linear_probe": lp_l, "full_finetune": ft_l, "missing": _missing(groups, lp_l, ft_l),
           "metrics": {}, "status": "not run"}
    if out["missing"]:
        out["sentence"] = f"Not run: missing groups {', '.join(out['missing'])}."
        return out
    lp, ft = groups[lp_l], groups[ft_l]
    out["aa_note"] = _aa_note((lp, None), (ft, None))
    for metric in METRICS:
        if metric == "aa" and not (_has(lp, "aa") and _has(ft, "aa")):
            continue
        w = welch(_vals(lp, metric), _vals(ft, metric), alpha)
        w["verdict"] = _lp_verdict(w, alpha)
        w["underpowered"] = w["ci"] is not None and (w["ci"][1] - w["ci"][0]) / 2 > wide
        out["metrics"][metric] = w
    verdicts = [w["verdict"] for w in out["metrics"].values()]
    out["status"] = ("does not hold" if "does not hold" in verdicts else "untested" if set(verdicts) == {"untested"}
                     else "holds")
    out["sentence"] = _sentence_linear(out, wide)
    return out


def _lp_verdict(w: dict, alpha: float) -> str:
    return {"holds": "beats", "not significant": "matches", "reversed": "does not hold"}.get(
        verdict(w, alpha), "untested")


def _sentence_linear(out: dict, wide: float) -> str:
    clauses = []
    for metric, w in out["metrics"].items():
        what = {"beats": "beats", "matches": "matches", "does not hold": "falls behind", "untested": "untested on"}
        c = f"{what[w['verdict']]} full finetuning on {NAMES[metric]} ({_d(w['diff'])} points"
        if w["ci"] is not None:
            c += f", {w['ci_level']:.0%} CI [{_n(w['ci'][0])}, {_n(w['ci'][1])}], {_p(w['p'])}"
        else:
            c += f", {w['note']}"
        if w["verdict"] == "matches" and w["underpowered"]:
            c += f"; underpowered: CI wider than ±{wide:g}, so this is not evidence of a match"
        clauses.append(c + ")")
    head = {"holds": "Holds here", "does not hold": "Does not hold here", "untested": "Cannot be tested here"}
    return f"{head[out['status']]}: linear probing " + "; ".join(clauses) + "."


def _pooled(diffs: list[float], alpha: float, paper: float | None) -> dict[str, Any]:
    """Paired differences pooled over methods, compared with the paper's average gain."""
    s = _diff_stats(diffs, alpha)
    s["verdict"] = verdict(s, alpha, ROLI_WORDS)
    s["paper"] = paper
    s["paper_in_ci"] = None if paper is None or s["ci"] is None else s["ci"][0] <= paper <= s["ci"][1]
    s["p_vs_paper"] = None
    if paper is not None and s["p"] is not None:
        d = np.asarray(diffs, float)
        t = (d.mean() - paper) / (d.std(ddof=1) / math.sqrt(len(d)))
        s["p_vs_paper"] = _f(2 * stats.t.sf(abs(t), len(d) - 1))
    return s


def finding_roli(groups: dict, spec: dict) -> dict[str, Any]:
    """Finding 3: does RoLI beat RanLI (paired by seed, per method and pooled), as the paper's average gain says?"""
    spec, groups = validate_spec(spec), _check_groups(groups)
    alpha = spec["alpha"]
    rule = (f"per metric, pooled over every (method, seed) pair: 'holds' when the mean RoLI - RanLI difference is "
            f"positive with paired t-test p < {alpha:g}, 'reversed' when negative with p < {alpha:g}, else 'not "
            "significant'. The finding holds when every pooled metric holds.")
    rows, missing = [], []
    for m in spec["methods"]:
        if m == LINEAR:  # linear probing has only a random init
            continue
        ran_l, roli_l = label(spec["robust"], m, "ranli"), label(spec["robust"], m, "roli")
        row = {"method": m, "ranli": ran_l, "roli": roli_l, "missing": _missing(groups, ran_l, roli_l)}
        rows.append(row)
        if row["missing"]:
            missing += row["missing"]
            continue
        row.update(_paired_metrics(groups[roli_l], groups[ran_l], alpha, ROLI_WORDS))
    ran = [r for r in rows if not r["missing"] and r["seeds"]]
    out = {"finding": "RoLI improves clean and robust accuracy over RanLI, per method.", "alpha": alpha, "rule": rule,
           "methods": rows, "missing": missing, "pooled": {}, "status": "not run"}
    if not ran:
        out["sentence"] = (f"Not run: no method has both inits with a common seed (missing groups: "
                           f"{', '.join(missing) or 'none'}).")
        return out
    for metric in METRICS:
        lacking = [r["method"] for r in ran if metric not in r["metrics"]]
        if lacking:
            out["pooled"][metric] = {"note": f"not pooled: no {NAMES[metric]} for every seed of {', '.join(lacking)}"}
            continue
        diffs = [x for r in ran for x in (_vals(groups[r["roli"]], metric, r["seeds"])
                                          - _vals(groups[r["ranli"]], metric, r["seeds"]))]
        out["pooled"][metric] = _pooled(diffs, alpha, spec["paper"].get(f"roli_gain_{metric}"))
    verdicts = [s["verdict"] for s in out["pooled"].values() if "verdict" in s]
    out["status"] = ("holds" if verdicts and all(v == "holds" for v in verdicts) else
                     "partly holds" if "holds" in verdicts and "reversed" not in verdicts else "does not hold")
    out["sentence"] = _sentence_roli(out, len(ran))
    return out


def _stat_clause(metric: str, s: dict, alpha: float, spread: str) -> str:
    """'PGD +2.10 ± 0.50 (SE), 95% CI [1.02, 3.18], t-test p = 0.001, sign-flip p = 0.004' and notes."""
    c = f"{NAMES[metric]} {_d(s['mean'])}"
    if s.get(spread) is not None:
        c += f" ± {_n(s[spread])} ({'SE' if spread == 'se' else 'std'})"
    if s.get("ci") is not None:
        c += f", {s['ci_level']:.0%} CI [{_n(s['ci'][0])}, {_n(s['ci'][1])}], t-test {_p(s['p'])}"
    else:
        c += f", {s['note']}"
    if s.get("sign_flip_p") is not None:
        c += f", sign-flip {_p(s['sign_flip_p'])}"
        if s.get("p") is not None and (s["p"] < alpha) != (s["sign_flip_p"] < alpha):
            c += " (the two tests disagree)"
    return c


def _sentence_roli(out: dict, n_methods: int) -> str:
    alpha = out["alpha"]
    clauses = []
    for metric, s in out["pooled"].items():
        if "verdict" not in s:
            clauses.append(f"{NAMES[metric]} {s['note']}")
            continue
        c = _stat_clause(metric, s, alpha, "se") + f": {s['verdict']}"
        if s["paper"] is not None:
            where = "" if s["paper_in_ci"] is None else " (inside our CI)" if s["paper_in_ci"] else " (outside our CI)"
            c += f"; paper {_d(s['paper'])}{where}"
        clauses.append(c)
    head = {"holds": "Holds here", "partly holds": "Partly holds here", "does not hold": "Does not hold here"}
    n = next(s["n"] for s in out["pooled"].values() if "n" in s)
    skipped = f" (not run: {', '.join(out['missing'])})" if out["missing"] else ""
    return (f"{head[out['status']]}: RoLI - RanLI pooled over {n_methods} method(s), {n} (method, seed) pairs"
            f"{skipped}: " + "; ".join(clauses) + ".")


def compare_quirks(groups: dict, spec: dict) -> list[dict[str, Any]]:
    """Each `compare` pair, variant - default paired by seed: roli's deviations from the reference, in numbers."""
    spec, groups = validate_spec(spec), _check_groups(groups)
    alpha = spec["alpha"]
    out = []
    for c in spec["compare"]:
        entry = {**c, "missing": _missing(groups, c["default"], c["variant"]), "status": "not run"}
        if entry["missing"]:
            entry["sentence"] = f"{c['name']}: not run (missing groups: {', '.join(entry['missing'])})."
        else:
            entry.update(_paired_metrics(groups[c["variant"]], groups[c["default"]], alpha, QUIRK_WORDS))
            entry["status"] = "compared" if entry["seeds"] else "not run"
            entry["sentence"] = _sentence_quirk(entry, alpha)
        out.append(entry)
    return out


def _sentence_quirk(e: dict, alpha: float) -> str:
    if not e["seeds"]:
        return f"{e['name']}: not run (no seed in both {e['default']} and {e['variant']})."
    by = {v: [NAMES[m] for m, s in e["metrics"].items() if s["verdict"] == v] for v in (*QUIRK_WORDS, "untested")}
    head = [f"{what} on {', '.join(by[v])}" for v, what in
            (("variant higher", "the variant is significantly higher"),
             ("variant lower", "the variant is significantly lower"),
             ("not significant", "no significant difference"), ("untested", "no test possible")) if by[v]]
    bits = [_stat_clause(m, s, alpha, "std") for m, s in e["metrics"].items()]
    return (f"{e['name']}: {'; '.join(head)} ({e['variant']} - {e['default']}, seeds "
            f"{', '.join(map(str, e['seeds']))}: " + "; ".join(bits) + ").")


def findings(groups: dict, spec: dict) -> dict[str, Any]:
    """Every finding and quirk comparison of a study, as one JSON-serialisable dict (for the committed results)."""
    spec = validate_spec(spec)
    _check_groups(groups)  # a bad record fails here, once
    return _jsonable({"format": FORMAT, "spec": spec,
                      "backbone": finding_backbone(groups, spec),
                      "linear_vs_full": finding_linear_vs_full(groups, spec),
                      "roli": finding_roli(groups, spec),
                      "quirks": compare_quirks(groups, spec)})


def _jsonable(x: Any) -> Any:
    """Plain dicts, lists, str, int, float and None; non-finite floats become None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _f(x)
    return x


# ---------------------------------------------------------------------------------------------------- layout
# The findings as data: `sections(result)` gives per finding (and for the quirk comparisons) its heading, statement,
# tables (header and rows of formatted cells, plus note lines), rule, verdict sentence and discussion, so that
# `markdown` here and report_html lay them out without knowing any column.


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _d(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _p(p: float | None) -> str:
    """p with 3 significant digits ('p < 0.001' below that)."""
    if p is None:
        return "no test"
    return "p < 0.001" if p < 0.001 else f"p = {p:#.3g}"


def _pm(mean, std) -> str:
    return f"{_n(mean)} ± {_n(std)}" if std is not None else _n(mean)


def _ci(s: dict) -> str:
    return "-" if s.get("ci") is None else f"[{_n(s['ci'][0])}, {_n(s['ci'][1])}]"


def _test(s: dict) -> str:
    return _p(s["p"]) if s.get("p") is not None else (s.get("note") or "no test")


def _note_lines(items: list[tuple[str, dict]]) -> list[str]:
    """What a table leaves out (AA without every seed, seeds without a partner), one line each."""
    out = []
    for who, r in items:
        if r.get("aa_note"):
            out.append(f"{who}{r['aa_note']}.")
        if r.get("unpaired_seeds"):
            out.append(f"{who}seeds {', '.join(map(str, r['unpaired_seeds']))} are in only one of the two groups "
                       "and left out of the pairing.")
    return out


def _tbl(header: list[str], rows: list[list[str]], notes: list[str] | None = None, caption: str = "") -> dict:
    """One table: an optional caption line above it, header, rows of cells and note lines below it."""
    return {"caption": caption, "header": header, "rows": rows, "notes": notes or []}


def _tables_backbone(f: dict) -> list[dict]:
    rows = []
    for r in f["methods"]:
        kind = "PEFT" if r["peft"] else "not PEFT"
        if r["missing"]:
            rows.append([r["method"], kind, "-", "-", "-", "-", "-", f"not run (missing {', '.join(r['missing'])})"])
        for metric, w in r["metrics"].items():
            rows.append([r["method"], kind, NAMES[metric], f"{_pm(w['mean_b'], w['std_b'])} (n={w['n_b']})",
                         f"{_pm(w['mean_a'], w['std_a'])} (n={w['n_a']})", _d(w["diff"]), _test(w),
                         "yes" if w["large"] else "no"])
    return [_tbl(["method", "kind", "metric", "standard backbone", "robust backbone", "robust - standard", "Welch",
                  "large margin"], rows, _note_lines([(f"{r['method']}: ", r) for r in f["methods"]]))]


def _tables_linear(f: dict) -> list[dict]:
    if f["status"] == "not run":
        return []
    rows = [[NAMES[m], f"{_pm(w['mean_a'], w['std_a'])} (n={w['n_a']})", f"{_pm(w['mean_b'], w['std_b'])} (n={w['n_b']})",
             _d(w["diff"]), _ci(w), _test(w), w["verdict"] + (" (underpowered)" if w["underpowered"] else "")]
            for m, w in f["metrics"].items()]
    return [_tbl(["metric", "linear probe", "full finetune", "LP - FT", f"{1 - f['alpha']:.0%} CI", "Welch",
                  "verdict"], rows, _note_lines([("", f)]))]


def _tables_roli(f: dict) -> list[dict]:
    if f["status"] == "not run":
        return []
    rows = []
    for r in f["methods"]:
        if r["missing"] or not r["seeds"]:
            why = f"missing {', '.join(r['missing'])}" if r["missing"] else "no common seed"
            rows.append([r["method"], "-", "-", "-", "-", "-", f"not run ({why})"])
        for metric, s in r.get("metrics", {}).items():
            rows.append([r["method"], NAMES[metric], str(s["n"]), f"{_d(s['mean'])} ± {_n(s['std'])}", _ci(s),
                         _test(s) + (" (1 df)" if s["n"] == 2 and s["p"] is not None else ""), s["verdict"]])
    pooled = []
    for metric, s in f["pooled"].items():
        if "verdict" not in s:
            pooled.append([NAMES[metric], "-", "-", "-", "-", "-", "-", s["note"]])
            continue
        paper = "-" if s["paper"] is None else _d(s["paper"]) + (
            "" if s["paper_in_ci"] is None else " (in CI)" if s["paper_in_ci"] else " (outside CI)")
        pooled.append([NAMES[metric], str(s["n"]), f"{_d(s['mean'])} ± {_n(s['se'])}", _ci(s), _test(s),
                       _p(s["sign_flip_p"]), paper, s["verdict"]])
    return [_tbl(["method", "metric", "pairs", "RoLI - RanLI (mean ± std)", "CI", "paired t", "verdict"], rows,
                 _note_lines([(f"{r['method']}: ", r) for r in f["methods"]])),
            _tbl(["metric", "pairs", "mean ± SE", "CI", "paired t", "sign-flip", "paper", "verdict"], pooled,
                 caption="Pooled over (method, seed) pairs:")]


def _tables_quirk(e: dict) -> list[dict]:
    if e["status"] == "not run":
        return []
    rows = [[NAMES[m], str(s["n"]), f"{_d(s['mean'])} ± {_n(s['std'])}", _ci(s), _test(s), _p(s["sign_flip_p"]),
             s["verdict"]] for m, s in e["metrics"].items()]
    return [_tbl(["metric", "pairs", "variant - default (mean ± std)", "CI", "paired t", "sign-flip", "verdict"], rows,
                 _note_lines([("", e)]))]


HEADINGS = {"backbone": "Finding 1. Standard vs robust backbone under adversarial PEFT",
            "linear_vs_full": "Finding 2. Linear probing vs full finetuning (robust backbone)",
            "roli": "Finding 3. RoLI vs RanLI (robust backbone)",
            "quirks": "Reference quirks vs roli defaults (variant - default, paired by seed)"}  # by result key
TABLES = {"backbone": _tables_backbone, "linear_vs_full": _tables_linear, "roli": _tables_roli}


def significance(spec: dict[str, Any]) -> str:
    """The line stating the significance level, above the findings."""
    return f"Significance level alpha = {spec['alpha']:g} (confidence intervals at {1 - spec['alpha']:.0%})."


def sections(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The findings of a `findings` result laid out, in order: per finding {key, heading, statement, tables, rule,
    sentence, status, parts: [], discussion}, then (when the spec compares any) the quirks as {key: "quirks",
    heading, parts, discussion} with statement, rule and sentence None and no tables; each part (a quirk) is
    {heading, tables, sentence}. A table is {caption, header, rows, notes}: its cells formatted, user text as is
    (the renderer escapes it); discussion is the spec's text or None."""
    discussion = result["spec"].get("discussion") or {}
    out = []
    for key, tables in TABLES.items():
        f = result[key]
        out.append({"key": key, "heading": HEADINGS[key], "statement": f["finding"], "tables": tables(f),
                    "rule": f["rule"], "sentence": f["sentence"], "status": f["status"], "parts": [],
                    "discussion": discussion.get(key)})
    if result["quirks"]:
        parts = [{"heading": e["name"], "tables": _tables_quirk(e), "sentence": e["sentence"]}
                 for e in result["quirks"]]
        out.append({"key": "quirks", "heading": HEADINGS["quirks"], "statement": None, "tables": [], "rule": None,
                    "sentence": None, "status": None, "parts": parts, "discussion": discussion.get("quirks")})
    return out


def md_cell(text: str) -> str:
    """A markdown table cell: a `|` in it (e.g. in a name from the spec) escaped, so it does not split the cell."""
    return str(text).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines, every cell escaped (see `md_cell`)."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(map(md_cell, cells)) + " |"

    return [line(header), "|" + "---|" * len(header), *map(line, rows)]


def _md_tables(tables: list[dict]) -> list[str]:
    lines: list[str] = []
    for t in tables:
        lines += [""] if lines else []
        lines += [t["caption"], ""] if t["caption"] else []
        lines += md_table(t["header"], t["rows"])
        lines += ["", *(f"- {note}" for note in t["notes"])] if t["notes"] else []
    return lines


def markdown(result: dict[str, Any], title: bool = True, closing: bool = True, level: int = 2) -> str:
    """The findings as markdown: per finding a heading (at `level`), a table, the rule and one plain sentence on
    whether it holds; the quirk comparisons one level below theirs (the report places the title and the closing text
    itself: `title`/`closing` False leave them out, and nests the findings one level lower)."""
    spec = result["spec"]
    out = [f"# {spec.get('title') or DEFAULTS['title']}", ""] if title else []
    out += [spec["intro"].strip(), ""] if spec.get("intro") else []
    out += [significance(spec), ""]
    for s in sections(result):
        out += [f"{'#' * level} {s['heading']}", ""]
        out += [f"*{s['statement']}*", ""] if s["statement"] else []
        tables = _md_tables(s["tables"])
        out += (tables + [""]) if tables else []
        out += [f"Rule: {s['rule']}", ""] if s["rule"] else []
        out += [f"**{s['sentence']}**", ""] if s["sentence"] else []
        for part in s["parts"]:
            out += [f"{'#' * (level + 1)} {part['heading']}", ""]
            tables = _md_tables(part["tables"])
            out += (tables + [""]) if tables else []
            out += [part["sentence"], ""]
        out += [s["discussion"].strip(), ""] if s["discussion"] else []
    out += [spec["closing"].strip(), ""] if spec.get("closing") and closing else []
    return "\n".join(out).rstrip() + "\n"
