"""The RoLI pipeline (Hua et al., CVPR 2024): stage 1 adversarial linear probing on the frozen robust backbone
(best validation-robust epoch), then the chosen method starting from that head. `init: ranli` is one stage.

Stage 1 is cached in the output root: any finished linear-probe run with the same backbone, data, attack,
evaluation, seed and stage-1 training settings is reused (its `stage1_key` in results.json matches).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from roli import distributed
from roli.attacks import build_attack
from roli.backbones import build_model
from roli.backbones.custom import from_module, module_digest
from roli.backbones.normalize import check_inputs
from roli.backbones.provenance import threat_mismatch
from roli.checkpoints import load_file
from roli.config import (
    BackboneConfig,
    Config,
    TransferConfig,
    config_hash,
    dump_config,
    to_dict,
)
from roli.data import DataError, Splits, build_data
from roli.data.custom import from_datasets
from roli.device import deterministic, device_name, oom_hint
from roli.errors import ConfigError, ResultsError, RunDirError
from roli.evaluation.accuracy import evaluate
from roli.files import discard_unstarted, locked, read_json, sha256sum
from roli.precision import RunPrecision, run_precision
from roli.training.rundir import (
    check_no_links_out,
    check_same_config,
    check_same_results,
    new_run_dir,
    read_results,
    write_predictions,
    write_results,
)
from roli.training.trainer import FitResult, TrainingFailed, fit, seed_everything
from roli.transfer import build_transfer
from roli.transfer.heads import head_state, init_ranli, init_roli
from roli.transfer.state import load_trained_state
from roli.version import versions

log = logging.getLogger(__name__)


STAGE1_INITS = ("roli", "lp_ft")  # the inits that start from a stage-1 linear probe's head


def stage1_config(cfg: Config) -> Config:
    """The linear-probing run that `cfg` starts from: adversarial for RoLI, clean for LP-FT.

    `init: lp_ft` (LP-FT, Kumar et al., ICLR 2022) is the control for RoLI: the same stage-1 settings (`stage1`)
    with `adversarial: false` (its `stage1.adversarial` is not read), and the epoch selected on validation *clean*
    accuracy, as Kumar et al. select on clean in-distribution validation accuracy: a clean probe is the start a
    user without adversarial training would take, so it is chosen as such (its validation PGD is still recorded).
    The stage 2 method then trains as `train` says (adversarially by default). Its `stage1_key` differs from
    RoLI's (the training and selection differ), so neither stage 1 is ever reused as the other.
    """
    lp = TransferConfig(name="linear_probe", init="ranli", head_init=cfg.transfer.head_init)
    if cfg.transfer.init == "lp_ft":
        clean = dataclasses.replace(cfg.stage1, adversarial=False)
        return dataclasses.replace(cfg, transfer=lp, train=clean, stage1=clean,
                                   eval=dataclasses.replace(cfg.eval, select="clean"))
    if not cfg.stage1.adversarial:
        raise ConfigError("stage1.adversarial: false with transfer.init: roli, whose stage 1 is adversarial linear "
                          "probing; for a clean linear-probe start use transfer.init: lp_ft")
    return dataclasses.replace(cfg, transfer=lp, train=cfg.stage1, stage1=cfg.stage1)


def stage1_key(cfg: Config, custom: Custom | None = None) -> str | None:
    """Cache key of a linear-probe RanLI run: exactly the settings that determine its head."""
    if cfg.transfer.name != "linear_probe" or cfg.transfer.init != "ranli":
        return None
    # The backbone file's content hash, not only its path: a replaced file must not reuse a stale head.
    return config_hash(cfg.backbone, backbone_file_hash(cfg.backbone), cfg.data, cfg.threat, cfg.attack, cfg.eval,
                       cfg.train, cfg.run.seed, cfg.transfer.head_init, *(custom.identity() if custom else ()))


@dataclass(frozen=True)
class Custom:
    """A model and/or data given from Python instead of by name (roli.run(cfg, model=..., data=...))."""

    module: nn.Module | None
    splits: Splits | None

    @staticmethod
    def make(cfg: Config, model: nn.Module | None, data) -> Custom | None:
        """None when neither is given; three Datasets become roli Splits; the module is copied."""
        if model is None and data is None:
            return None
        if data is not None and not isinstance(data, Splits):
            if len(data) != 3:
                raise DataError("data= takes roli Splits or three Datasets (train, val, test)")
            data = from_datasets(*data, config=cfg.data)
        return Custom(copy.deepcopy(model) if model is not None else None, data)

    def config(self, cfg: Config) -> Config:
        """The recorded config names what was given (config.yaml cannot rebuild a Python object)."""
        bb = dataclasses.replace(cfg.backbone, name=f"custom:{type(self.module).__name__}", checkpoint=None) \
            if self.module is not None else cfg.backbone
        data = dataclasses.replace(cfg.data, name="custom") if self.splits is not None else cfg.data
        return dataclasses.replace(cfg, backbone=bb, data=data)

    def identity(self) -> tuple[str, ...]:
        """What the stage-1 cache key adds: the module's weights and the data's membership and labels."""
        out = []
        if self.module is not None:
            out.append(module_digest(self.module))
        if self.splits is not None:
            out.append(json.dumps({k: v for k, v in self.splits.info.items() if k.endswith(("_hash", "_size"))},
                                  sort_keys=True))
        return tuple(out)

    def kwargs(self) -> dict:
        """What run() takes to use the same model and data again (RoLI's stage 1)."""
        return {"model": self.module, "data": self.splits}


def backbone_file_hash(backbone: BackboneConfig) -> str | None:
    """SHA-256 of the backbone weights file named in the config (None for shipped or random-init backbones)."""
    path = backbone.checkpoint
    return sha256sum(path) if path and Path(path).is_file() else None


def find_stage1(out: Path, key: str) -> Path | None:
    """A complete linear-probe run under `out` whose stage1_key is `key` (the stage-1 cache), else None."""
    for res_path in sorted(out.glob("*/results.json")):
        try:
            res = read_json(res_path, "results.json")
        except ResultsError as e:  # a damaged results.json elsewhere in the folder is not this stage 1
            log.warning("RoLI stage 1: skipping %s", e)
            continue
        if isinstance(res, dict) and res.get("stage1_key") == key and res.get("status") == "complete":
            return res_path.parent
    return None


def ensure_stage1(cfg: Config, out: Path, custom: Custom | None = None) -> tuple[Path, dict]:
    """RoLI's stage 1 for `cfg`: reused from the cache, resumed, or run; returns its folder and results."""
    s1 = stage1_config(cfg)
    key = stage1_key(s1, custom)
    # Two runs in one --out that need the same stage 1: the second waits for the first's, then reuses it.
    lock = locked(out / f".stage1-{key[:10]}.lock") if distributed.world().is_main else contextlib.nullcontext()
    with lock:
        return _stage1(s1, key, out, custom)


def _stage1(s1: Config, key: str, out: Path, custom: Custom | None) -> tuple[Path, dict]:
    """`ensure_stage1` under its lock."""
    # Under torchrun rank 0 decides (reuse, resume or run) and every rank follows: a folder rank 0 creates must not
    # change another rank's decision.
    found, pending_exists = distributed.broadcast((find_stage1(out, key), (out / f"stage1-{key[:10]}").exists()))
    if found is not None:
        log.info("RoLI stage 1: reusing %s (key %s)", found, key)
        return found, read_results(found)
    pending = out / f"stage1-{key[:10]}"
    if pending_exists:
        log.info("RoLI stage 1: resuming %s", pending)
        return pending, run(s1, out, resume=pending, **(custom.kwargs() if custom else {}))
    log.info("%s stage 1: %s linear probing (key %s)", *(("RoLI", "adversarial") if s1.train.adversarial
                                                        else ("LP-FT", "clean")), key)
    return pending, run(s1, out, name=pending.name, **(custom.kwargs() if custom else {}))


def run(cfg: Config, out: str | Path = "runs", name: str | None = None, resume: str | Path | None = None,
        recipe: str | None = None, model: nn.Module | None = None, data: Splits | Sequence[Dataset] | None = None
        ) -> dict:
    """Run one recipe end to end (both RoLI stages if `transfer.init: roli`); returns results.json's dict.

    `model` (any nn.Module from [0,1] images to logits or features, see roli.backbones.custom) replaces
    `backbone`; `data` (roli Splits, or (train, val, test) map-style Datasets, see roli.data.custom) replaces
    `data.name`. Both are copied, never changed; the run folder is the same as for a recipe.

    Example:
        >>> cfg = roli.load_config("recipes/tiny/mnist_lora_roli.yaml", overrides=["train.epochs=2"])
        >>> result = roli.run(cfg, out="runs")  # runs/mnist_lora_roli/: results.json, best.pt, train.log
        >>> result["test"]["clean"], result["test"]["pgd"]
    """
    custom = Custom.make(cfg, model, data)
    cfg = custom.config(cfg) if custom else cfg
    w, _ = distributed.init(cfg.run.device)  # under torchrun: join the process group (once)
    if not w.is_main:  # one log, from rank 0; the others speak only for warnings and errors
        logging.getLogger("roli").setLevel(max(logging.getLogger("roli").getEffectiveLevel(), logging.WARNING))
    out = Path(out)
    made = _missing_parents(out)  # folders this run makes: removed again if it fails before it starts
    t0 = time.perf_counter()
    run_dir = None
    if resume is not None:
        run_dir, done = _resumable(cfg, Path(resume))
        if done is not None:  # nothing to resume: its files are never rewritten
            return done
        out = run_dir.parent
    stage1 = None
    if cfg.transfer.init in STAGE1_INITS:
        s1_dir, s1_res = ensure_stage1(cfg, out, custom)
        stage1 = {"run_dir": str(s1_dir), "checkpoint": str(s1_dir / "best.pt"), "key": s1_res["stage1_key"],
                  "selected_epoch": s1_res["selected_epoch"], "val": s1_res["best_val"], "test": s1_res["test"]}
    if run_dir is None:  # rank 0 picks the folder, every rank uses it
        run_dir = distributed.broadcast(
            new_run_dir(out, name or cfg.run.name or f"{cfg.transfer.name}-{cfg.transfer.init}") if w.is_main else None)
    if resume is None and w.is_main:
        try:
            dump_config(cfg, run_dir / "config.yaml")
        except BaseException:
            discard_unstarted(run_dir)
            raise
    # the run's own log (rank 0), appended to on resume
    handler = logging.FileHandler(run_dir / "train.log") if w.is_main else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("roli").addHandler(handler)
    try:
        with deterministic(cfg.run.deterministic):  # scoped: a sweep's next cell starts from the default again
            return _train_and_test(cfg, run_dir, resume is not None, stage1, recipe, t0, custom)
    except BaseException:
        # Failed before its results.json (data, model or method could not be set up): a new run's folder is removed,
        # so that nobody (a sweep) mistakes it for resumable work.
        if resume is None and w.is_main and not (run_dir / "results.json").exists() and discard_unstarted(run_dir):
            log.info("removed %s: the run failed before training started", run_dir)
            for folder in made:  # --out and the parents this run made, if they are empty now
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise
    finally:
        logging.getLogger("roli").removeHandler(handler)
        handler.close()


def _missing_parents(out: Path) -> list[Path]:
    """`out` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (out, *out.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _resumable(cfg: Config, run_dir: Path) -> tuple[Path, dict | None]:
    """A run folder to resume, checked (its config.yaml, the same settings); with the results of a complete run,
    which is never rewritten."""
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir} is not a roli run folder (no config.yaml); pass the folder of the run")
    check_same_config(cfg, run_dir)
    check_no_links_out(run_dir)
    done = read_results(run_dir)
    check_same_results(cfg, run_dir, done)
    if done and done.get("status") == "complete":
        log.info("%s is complete (results.json); nothing to resume, its results are kept", run_dir)
        return run_dir, {**done, "run_dir": str(run_dir)}  # the folder as found now (it may have been moved)
    return run_dir, None


def accelerate(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """GPU habits that change no number: cuDNN autotuning (unless deterministic), channels_last for convolutional
    backbones, and `run.compile` (torch.compile of the network in place, so checkpoint keys stay the same)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.run.deterministic
        if any(isinstance(m, nn.Conv2d) and m.kernel_size != m.stride for m in model.modules()):  # not patch embeds
            model = model.to(memory_format=torch.channels_last)
    if cfg.run.compile:
        model.net.compile()
    return model


def _build_model(cfg: Config, splits: Splits, stage1: dict | None, custom: Custom | None,
                 device: torch.device) -> tuple[nn.Module, dict]:
    """The run's model on its device (the backbone or the given module, the RanLI head, the stage-1 head of RoLI or
    LP-FT, the method applied) and the backbone's load report (what was loaded and mapped, and the normalisation
    used). roli.evaluation.interpolate.start_model rebuilds the same start: change both together (a test checks)."""
    if custom and custom.module is not None:
        model = from_module(copy.deepcopy(custom.module), splits.num_classes, example=splits.train[0][0][None])
    else:
        model = build_model(cfg.backbone, splits.num_classes)
    backbone_report = model.load_report
    check_inputs(model, splits.train, splits.num_classes, cfg.backbone.name)
    init_ranli(model, cfg.transfer)
    if stage1 is not None:
        init_roli(model, head_state(stage1["checkpoint"]), stage1["checkpoint"])
    return accelerate(build_transfer(cfg.transfer).apply(model).to(device), cfg, device), backbone_report


def _fit(model: nn.Module, cfg: Config, splits: Splits, run_dir: Path, resume: bool, results: dict,
         is_main: bool) -> FitResult:
    """fit(); a run that fails in training (TrainingFailed) says so in its results.json before the error goes on."""
    try:
        return fit(model, cfg, splits, run_dir, resume=resume)
    except TrainingFailed as e:
        if is_main:
            write_results(run_dir, {**results, "status": "failed", "error": str(e)})
        raise


def _test(model: nn.Module, cfg: Config, splits: Splits, run_dir: Path, precision: RunPrecision) -> dict:
    """Clean and `eval.attack` accuracy on the test split, of the selected epoch's weights (best.pt)."""
    best = load_file(run_dir / "best.pt")
    load_trained_state(model, best["model"], run_dir / "best.pt")  # lean: on top of the same frozen backbone
    predictions: dict = {}
    with oom_hint("test evaluation", "data.eval_batch_size", cfg.data.eval_batch_size):
        out = evaluate(model, distributed.sharded_loader(splits.test, cfg.data.eval_batch_size, shuffle=False),
                       {"clean": None, "pgd": build_attack(cfg.eval.attack, cfg.threat, precision.eval)},
                       early_stop=cfg.eval.early_stop, predictions=predictions)
    out["predictions"] = write_predictions(run_dir, predictions) if predictions else None
    return out


def _record_completion(results: dict, cfg: Config, fitted: FitResult, test: dict, t0: float) -> None:
    """`results` as complete: the history, the selected epoch, its validation and the test numbers, the time."""
    results.update(
        status="complete", history=fitted.history, selected_epoch=fitted.best["epoch"],
        best_val={"clean": fitted.best["val_clean"], "robust": fitted.best["val_robust"]},
        test={"clean": test["clean"]["acc"], "pgd": test["pgd"]["acc"], "n": test["clean"]["n"],
              "attack": to_dict(cfg.eval.attack), "threat": to_dict(cfg.threat),
              "pgd_images_per_s": test["pgd"]["images_per_s"], "early_stop": cfg.eval.early_stop,
              "predictions": test.get("predictions")},
        seconds=round(time.perf_counter() - t0, 1),
    )
    if fitted.co_guard is not None:  # the catastrophic-overfitting guard: its events and the attack it ended with
        results["co_guard"] = fitted.co_guard


def _train_and_test(cfg: Config, run_dir: Path, resume: bool, stage1: dict | None, recipe: str | None,
                    t0: float, custom: Custom | None = None) -> dict:
    w, device = distributed.init(cfg.run.device)
    precision = run_precision(cfg, device, warn=False)  # fp16 on a CPU fails here, before any work; fit() warns
    torch.set_num_threads(cfg.run.threads or max(1, (os.cpu_count() or 1) // w.size))
    seed_everything(cfg.run.seed)
    splits = custom.splits if custom and custom.splits else build_data(cfg.data)
    model, backbone_report = _build_model(cfg, splits, stage1, custom, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    results = {
        "status": "running", "run_dir": str(run_dir), "recipe": recipe,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": to_dict(cfg), "seed": cfg.run.seed, "versions": versions(), "device": device_name(device),
        "world_size": w.size,
        "threads": torch.get_num_threads(), "command": " ".join(sys.argv), "data": splits.info,
        "method": cfg.transfer.name, "init": cfg.transfer.init, "stage1_key": stage1_key(cfg, custom), "stage1": stage1,
        "params": {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())},
        "backbone": backbone_report, "precision": precision.to_dict(),
        "threat_mismatch": threat_mismatch(backbone_report, cfg.threat),  # pretrained at another eps/norm
    }
    if w.is_main:
        write_results(run_dir, results)
    fitted = _fit(model, cfg, splits, run_dir, resume, results, w.is_main)
    test = _test(model, cfg, splits, run_dir, precision)
    _record_completion(results, cfg, fitted, test, t0)
    if w.is_main:
        write_results(run_dir, results)
        if not cfg.run.keep_resume_state:  # only now that results.json says complete: a kill before this resumes
            (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    distributed.barrier()
    log.info("%s: test clean %.2f%%, %s %.2f%% (epoch %d) -> %s", run_dir.name, results["test"]["clean"],
             cfg.eval.attack.name, results["test"]["pgd"], results["selected_epoch"], run_dir)
    return results
