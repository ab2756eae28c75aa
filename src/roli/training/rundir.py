"""A run's folder: made fresh (an existing run is never reused), its results.json read and written, and the check
that a resumed run keeps the settings it was made with (its config.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roli.config import Config, ConfigError, load_config, to_dict
from roli.errors import RunDirError
from roli.files import atomic_write_json, read_json, write_atomic

# Settings a resumed run may change: where and how fast it computes, not what it computes.
RESUMABLE_CHANGES = {"run.threads", "run.device", "run.name", "run.keep_resume_state", "data.num_workers",
                     "data.root"}


NAME_MAX = 128  # characters in a run folder's name (file systems allow 255 bytes; suffixes and UTF-8 need room)


def check_name(name: object, where: str = "run name") -> str:
    """A run folder's name is a name: not empty, no path separator, not `.` or `..`, no control character, at
    most NAME_MAX characters; so every run folder lies directly inside `--out`. RunDirError names the fix."""
    bad = (f"it is a {type(name).__name__}, not text" if not isinstance(name, str) else
           "it is empty" if not name.strip() else
           "it contains a path separator" if "/" in name or "\\" in name else
           "it is . or .." if name.strip() in (".", "..") else
           "it contains a control character" if any(ord(c) < 32 or ord(c) == 127 for c in name) else
           f"it is longer than {NAME_MAX} characters" if len(name) > NAME_MAX else None)
    if bad:
        raise RunDirError(f"{where} {name!r} is not a folder name ({bad}); give a plain name such as lora-roli-s0 "
                          "(the folder is made inside --out)")
    return name


def new_run_dir(out: Path, name: str) -> Path:
    """A fresh folder directly inside `out`; an existing run is never reused or overwritten (a suffix is added)."""
    check_name(name)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = out / (name if i == 1 else f"{name}-{i}")
        if path.resolve().parent != out.resolve():  # a symlinked name, or anything else that leads out of `out`
            raise RunDirError(f"run folder {path} would not lie inside {out}; give a plain name")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"no free run folder name for {name!r} in {out}")


def read_results(run_dir: Path) -> dict | None:
    """The run's results.json, or None before it is written."""
    path = run_dir / "results.json"
    return read_json(path, "results.json") if path.is_file() else None


def write_results(run_dir: Path, results: dict) -> None:
    """The run's results.json, replaced atomically."""
    atomic_write_json(run_dir / "results.json", results)


PREDICTIONS = "test_predictions.npz"


def write_predictions(run_dir: Path, predictions: dict) -> str:
    """The test split's per-example verdicts (label, clean prediction, robust under `eval.attack`; in the split's
    order) as a compact `test_predictions.npz` beside results.json, so two runs can be compared image by image
    (e.g. McNemar or a paired bootstrap over test images); returns its file name."""
    import numpy as np

    arrays = {"label": predictions["label"].astype(np.int16), "clean_pred": predictions["clean_pred"].astype(np.int16)}
    if "robust" in predictions:
        arrays["robust"] = np.packbits(predictions["robust"].astype(bool))
        arrays["n"] = np.array(len(predictions["robust"]))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would add ".npz" to a temporary name
            np.savez_compressed(f, **arrays)

    write_atomic(run_dir / PREDICTIONS, write)
    return PREDICTIONS


def read_predictions(path: str | Path) -> dict:
    """A run's `test_predictions.npz` as arrays `label`, `clean_pred` and `robust` (bool), in the split's order.

    Example:
        >>> p = read_predictions("runs/demo/mnist_full_roli/test_predictions.npz")
        >>> (p["clean_pred"] == p["label"]).mean(), p["robust"].mean()  # clean and robust accuracy
    """
    import numpy as np

    with np.load(path, allow_pickle=False) as f:
        out = {k: f[k] for k in ("label", "clean_pred")}
        if "robust" in f:
            out["robust"] = np.unpackbits(f["robust"])[: int(f["n"])].astype(bool)
    return out


def changed_settings(now: dict, saved: dict, allowed: set[str] | frozenset[str] = frozenset()
                     ) -> list[tuple[str, Any, Any]]:
    """(`section.key`, saved value, value now) for every setting of `now` that differs from `saved` (both configs
    as to_dict gives them), in the config's order, but for the keys in `allowed`."""
    return [(f"{s}.{k}", saved.get(s, {}).get(k), v) for s in now for k, v in now[s].items()
            if f"{s}.{k}" not in allowed and saved.get(s, {}).get(k) != v]


def _resume_diff(cfg: Config, saved: dict, shown: int) -> str:
    """The first `shown` settings of `cfg` that differ from `saved` but for RESUMABLE_CHANGES, as
    'key: old -> new; ...' ('' when none do)."""
    diff = changed_settings(to_dict(cfg), saved, RESUMABLE_CHANGES)
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in diff[:shown])


def check_same_config(cfg: Config, run_dir: Path) -> None:
    """A run resumes only with the settings it was made with (config.yaml), but for RESUMABLE_CHANGES."""
    diff = _resume_diff(cfg, to_dict(load_config(run_dir / "config.yaml")), 5)
    if diff:
        raise ConfigError(f"{run_dir} was made with different settings ({diff}); resume it with its own config.yaml "
                          "(no --set), or start a new run")


def check_same_results(cfg: Config, run_dir: Path, results: dict | None) -> None:
    """Before a resume writes anything: its config is the one its results.json was made with (a config.yaml copied
    in from another recipe would otherwise rewrite results.json and then fail)."""
    if not (results and isinstance(results.get("config"), dict)):
        return
    diff = _resume_diff(cfg, results["config"], 3)
    if diff:
        raise RunDirError(f"{run_dir}: its config.yaml is not the one its results.json was made with ({diff}); was "
                          "another recipe's config.yaml copied in? Restore the run's own, or start a new run")


def check_no_links_out(run_dir: Path) -> None:
    """Before a resume writes anything: no file of the run folder is a link that leads out of it (roli appends to
    train.log and replaces its other files; it never writes through a link to somewhere else)."""
    inside = run_dir.resolve()
    for p in sorted(run_dir.iterdir()):
        if p.is_symlink() and inside not in p.resolve().parents:
            raise RunDirError(f"{p} is a link to {p.resolve()}, outside the run folder; roli does not write through "
                              "it. Replace the link by the file itself (or remove it), then resume")
