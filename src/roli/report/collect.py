"""Collect runs into report rows: each complete run's results.json, and from the `roli eval` JSONs beside it the
preferred AutoAttack number, ε sweep and checks on the run's own test split and threat model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from roli.errors import ResultsError
from roli.evaluation.expected import expected_robustness
from roli.evaluation.ordering import check_ordering
from roli.files import read_json
from roli.numbers import eps_str, parse_number
from roli.report.groups import dataset_label

log = logging.getLogger(__name__)

EPS_TOL = 1e-9  # eps values compared across results.json and eval JSONs


def eval_results(run_dir: Path) -> list[dict]:
    """The `roli eval` JSONs (eval-*.json) written beside a run's checkpoint, oldest first."""
    found = []
    for path in sorted(Path(run_dir).glob("eval-*.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("report: skipping unreadable %s (%s)", path, e)
            continue
        if isinstance(res, dict) and "results" in res:
            found.append({**res, "file": path.name})
    return sorted(found, key=lambda r: r.get("started", ""))


def _threat_of(settings: object) -> tuple[str, float] | None:
    if isinstance(settings, dict) and settings.get("norm") is not None and settings.get("eps") is not None:
        return str(settings["norm"]).lower(), parse_number(settings["eps"])
    return None


def run_threat(results: dict) -> tuple[str, float]:
    """A run's threat model (norm, eps) from its results.json: `config.threat` (current layout), else
    `config.attack` (older results.json), else the test attack."""
    cfg = results.get("config") or {}
    for settings in (cfg.get("threat"), cfg.get("attack"), (results.get("test") or {}).get("attack")):
        if (threat := _threat_of(settings)) is not None:
            return threat
    raise ValueError(f"results.json of {results.get('run_dir', '?')} holds no threat model (config.threat or "
                     "config.attack with norm and eps)")


def eval_threats(ev: dict, attack: str | None = None) -> list[tuple[str, float]]:
    """The threat models an eval JSON states: its top-level `threat` and the settings of `attack`, or with
    `attack` None, of its main `attack` and of every attack in `attacks`."""
    attacks = ev.get("attacks") or {}
    sources = [ev.get("threat"), *([attacks.get(attack)] if attack else [ev.get("attack"), *attacks.values()])]
    return [t for s in sources if (t := _threat_of(s)) is not None]


def _same_threat(a: tuple[str, float], b: tuple[str, float]) -> bool:
    return a[0] == b[0] and abs(a[1] - b[1]) <= EPS_TOL


def on_threat(ev: dict, threat: tuple[str, float], data: str, attack: str | None = None) -> bool:
    """True if `ev` evaluated the run's own test split (dataset `data`) on the run's threat model: every threat
    model it states (see `eval_threats`) has the run's norm and eps, and it states at least one."""
    split = ev.get("data") or {}
    claims = eval_threats(ev, attack)
    return (split.get("split") == "test" and split.get("name") == data and bool(claims)
            and all(_same_threat(c, threat) for c in claims))


def _has(ev: dict, want: str) -> bool:
    return bool(ev.get("sweep")) if want == "sweep" else want in (ev.get("results") or {})


def _aa_version(ev: dict) -> str | None:
    return ((ev.get("attacks") or {}).get("autoattack") or {}).get("version")


def _rank(ev: dict) -> tuple:
    """Preference among evaluations on the run's threat model: standard AutoAttack over other versions (or none),
    then more images, then newer."""
    results = ev.get("results") or {}
    if "autoattack" in results:
        n = results["autoattack"].get("n") or 0
    else:
        n = max((r.get("n") or 0 for r in results.values() if isinstance(r, dict)), default=0)
    return _aa_version(ev) == "standard", n, ev.get("started", "")


def _best(evals: list[dict], want: str, threat: tuple[str, float], data: str) -> dict | None:
    """The preferred (see `_rank`) evaluation on the run's test split and threat model that has `want`: an
    attack's result (e.g. "autoattack", judged by that attack's settings) or a "sweep"."""
    hits = [e for e in evals if _has(e, want) and on_threat(e, threat, data, None if want == "sweep" else want)]
    return max(hits, key=_rank) if hits else None


def _describe(ev: dict, attack: str | None = None) -> dict:
    split = ev.get("data") or {}
    claims = eval_threats(ev, attack)
    return {"file": ev["file"], "data": split.get("name"), "split": split.get("split"),
            "threat": ", ".join(sorted({f"{n} eps {eps_str(e)}" for n, e in claims})) or "no threat model stated"}


def collect(run_dirs: list[Path]) -> list[dict]:
    """One row per complete run. Its AutoAttack number comes from the preferred `roli eval` JSON (see `_rank`) on
    the run's test split and threat model; other AutoAttack JSONs are listed under `aa_ignored`."""
    rows = []
    for d in run_dirs:
        path = Path(d) / "results.json"
        res = read_json(path, "results.json")
        if not isinstance(res, dict) or res.get("status") != "complete":
            continue
        try:
            rows.append(_row(Path(d), res))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"key {e.args[0]!r} is missing" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise ResultsError(f"{path}: not a complete roli results.json ({what}); was it written by another tool "
                               "or edited? Move it out of the folders given to the report") from None
    return rows


def _attack_name(attack: dict) -> str:
    """PGD-10 (step 2/255): how the settings line names an attack."""
    name = str(attack.get("name", "?")).upper() + (f"-{attack['steps']}" if attack.get("steps") else "")
    extra = [f"step {eps_str(attack['step_size'])}"] if attack.get("step_size") is not None else []
    extra += [f"{attack['restarts']} restarts"] if (attack.get("restarts") or 1) > 1 else []
    return name + (f" ({', '.join(extra)})" if extra else "")


def _checks(evals: list[dict], threat: tuple[str, float], data: str) -> list[dict]:
    """Per suite, the checks of the preferred (see `_rank`) eval JSON on the run's test split and threat model."""
    best: dict = {}
    for e in evals:
        if on_threat(e, threat, data):
            best[e.get("suite")] = max(best.get(e.get("suite"), e), e, key=_rank)
    return [dict(c, file=e["file"]) for e in best.values() for c in e.get("checks", [])]


def pretrain_cell(res: dict, threat: tuple[str, float]) -> str:
    """The "pretrain threat" cell of a run: "same" when the backbone was robustly pretrained against the run's
    threat model, "linf 4/255 ≠ run" when against another, "not robust" when the backbone is known to be standard,
    "unknown" when nothing is recorded (results.json from before `backbone.pretrain_threat`, or a random init)."""
    backbone = res.get("backbone") if isinstance(res.get("backbone"), dict) else {}
    pt = backbone.get("pretrain_threat")
    if not isinstance(pt, dict):
        return "not robust" if "pretrain_threat" in backbone and backbone.get("pretrain_threat_from") else "unknown"
    norm, eps = str(pt["norm"]).lower(), parse_number(pt["eps"])
    return "same" if _same_threat((norm, eps), threat) else f"{norm} {eps_str(eps)} ≠ run"


def expected_of(sweep_eval: dict | None, eps: float) -> float | None:
    """Expected robustness (mean accuracy over eps uniform in [0, eps], roli.evaluation.expected) of the run's
    preferred eps sweep: as its eval JSON states it, else from its points (older evals), when they span [0, eps]."""
    if not sweep_eval:
        return None
    if sweep_eval.get("expected_robustness") is not None:
        return sweep_eval["expected_robustness"]
    try:
        return expected_robustness(sweep_eval["sweep"], eps)
    except (ValueError, KeyError, TypeError):
        return None


def _integrity(evals: list[dict], threat: tuple[str, float], data: str) -> list[dict]:
    """The integrity flags (see `roli.evaluation.integrity`) of the preferred eval JSON that has them."""
    hits = [e for e in evals if e.get("integrity") and on_threat(e, threat, data)]
    best = max(hits, key=_rank) if hits else None
    return [dict(f, file=best["file"]) for f in best["integrity"]] if best else []


def _row(d: Path, res: dict) -> dict:
    """The report row of one complete run."""
    cfg = res["config"]
    data = cfg["data"]["name"]
    norm, eps = threat = run_threat(res)
    evals = eval_results(d)
    aa = _best(evals, "autoattack", threat, data)
    ignored = [_describe(e, "autoattack") for e in evals if _has(e, "autoattack")
               and not on_threat(e, threat, data, "autoattack")]
    for i in ignored:
        log.log(logging.INFO if aa else logging.WARNING,
                "report: %s: ignoring AutoAttack in %s (%s %s, %s): the run is %s eps %s on its %s test split",
                Path(d).name, i["file"], i["data"], i["split"], i["threat"], norm, eps_str(eps), data)
    aa_res = aa["results"]["autoattack"] if aa else {}
    checks = _checks(evals, threat, data)
    if aa and aa_res.get("n") == res["test"]["n"]:
        checks.append({**check_ordering({"clean": res["test"]["clean"], "pgd": res["test"]["pgd"],
                                         "autoattack": aa_res["acc"]}).to_dict(), "file": "the report's numbers"})
    train = cfg.get("train") or {}
    return {
        "run": Path(d).name, "method": res["method"], "init": res["init"], "backbone": cfg["backbone"]["name"],
        "data": data, "dataset": dataset_label(cfg), "seed": (cfg.get("run") or {}).get("seed", res.get("seed")),
        "norm": norm, "eps": eps,
        "selected_epoch": res["selected_epoch"], "val_clean": res["best_val"]["clean"],
        "val_robust": res["best_val"]["robust"], "test_clean": res["test"]["clean"],
        "test_pgd": res["test"]["pgd"], "test_aa": aa_res.get("acc"),
        "seconds": res["seconds"], "pgd_steps": res["test"]["attack"]["steps"], "n_test": res["test"]["n"],
        "train_attack": _attack_name(cfg["attack"]) if train.get("adversarial", True) else "none (clean training)",
        "eval_attack": _attack_name(res["test"]["attack"]),
        "eval_precision": ((res.get("precision") or {}).get("eval") or {}).get("used"),
        "aa_n": aa_res.get("n"), "aa_version": _aa_version(aa) if aa else None,
        "aa_attacks": ",".join(aa["attacks"]["autoattack"].get("attacks") or []) if aa else None,
        "aa_seconds": aa_res.get("seconds"), "aa_file": aa["file"] if aa else None, "aa_ignored": ignored,
        "epochs": train.get("epochs"), "device": res.get("device"),
        "run_dir": str(d), "config": cfg, "history": res.get("history") or [], "checks": checks,
        "sweep": (sweep := _best(evals, "sweep", threat, data)), "test_expected": expected_of(sweep, eps),
        "pretrain_threat": pretrain_cell(res, threat), "threat_mismatch": res.get("threat_mismatch"),
        "integrity": _integrity(evals, threat, data),
        "aa_substitutions": (aa["attacks"]["autoattack"].get("substitutions") or []) if aa else [],
    }
