"""Typed, frozen run configuration loaded strictly from YAML.

Every number a run depends on lives here (nothing is hidden in the training loop, unlike the reference code's
hard-coded PGD step and AdamW decay, protocol B3). Unknown keys, wrong types and impossible values are errors that
name the key, the file and the valid choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from roli.errors import ConfigError
from roli.files import atomic_write_text
from roli.numbers import parse_number
from roli.registry import ATTACKS, CONVERTERS, OBJECTIVES, SCHEDULES, TRANSFER
from roli.strict_yaml import load_yaml, shown

log = logging.getLogger(__name__)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# Every integer field ends up in torch or numpy, which take 64-bit integers: a larger one is refused when the recipe is
# loaded, not deep inside a run.
INT64 = (-(2**63), 2**63 - 1)
# run.seed: the data order of epoch e is seeded with torch.Generator().manual_seed(seed * 1000 + e), which takes
# [-2**63, 2**64 - 1]; 2**53 keeps that true for any epoch count (and is the largest integer a JSON reader keeps exact).
SEED_RANGE = (-(2**53), 2**53)
THREADS_MAX = 2**31 - 1  # torch.set_num_threads takes a C int


# Field metadata of settings added after a release: left at its default, the field is not part of config_hash.
SINCE_0_3 = types.MappingProxyType({"identity": "omit_default"})

DROP_KNOBS = ("drop_rate", "proj_drop_rate", "attn_drop_rate", "pos_drop_rate", "drop_path_rate")


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """The `backbone` section: which network, which local weights file, and how its inputs are normalised."""

    name: str = "vit_tiny_28"  # a roli backbone or any timm architecture name
    checkpoint: str | None = None  # local weights file; None = random init
    pretrained: bool = False  # hub weights are refused: roli never downloads (pass `checkpoint`)
    input_size: int | None = None  # resize inside the model, so perturbations live at the data's resolution
    # Dropout knobs, passed to timm when > 0 and the same for every method (protocol B8). The reference's ViT dropout
    # 0.1 sits in the MLP and the embeddings (proj_drop_rate + pos_drop_rate); its Swin drop-path is 0.5.
    drop_rate: float = 0.0  # timm's pre-classifier dropout only
    proj_drop_rate: float = 0.0  # after the MLP layers and the attention output projection
    attn_drop_rate: float = 0.0  # on the attention weights
    pos_drop_rate: float = 0.0  # on the patch + position embeddings (ViT)
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this value over the blocks
    mean: tuple[float, ...] | None = None  # None = the checkpoint's / known table's / architecture's own
    std: tuple[float, ...] | None = None
    # How the checkpoint's keys map onto the timm architecture (roli.backbones.convert.CONVERTERS): auto | timm |
    # timm_swin_legacy | ms_swin | ares | torchvision_vit | madry. auto detects the format from the keys.
    format: str = "auto"
    # Extra [regex, replacement] rules applied to every key after `format` (re.sub; an empty result drops the key).
    key_map: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for k in DROP_KNOBS:
            _check(0 <= getattr(self, k) < 1, f"{k} must be in [0, 1), got {getattr(self, k)}")
        for pattern, _ in self.key_map:
            try:
                re.compile(pattern)
            except (re.error, OverflowError, RecursionError) as e:  # OverflowError: a repeat count like a{4294967296}
                raise ValueError(f"key_map: {shown(pattern)} is not a valid regular expression ({e})") from None
        if self.format != "auto":
            _check(self.format in CONVERTERS, f"format {self.format!r} is unknown; choose auto or one of "
                                              f"{CONVERTERS.names()}")
        _check((self.mean is None) == (self.std is None), "give both mean and std, or neither")
        _check(self.mean is None or len(self.mean) == len(self.std) >= 1,
               f"mean and std need one value per input channel each (e.g. 3 and 3, or 1 and 1), got "
               f"{len(self.mean or ())} and {len(self.std or ())}: give the same number of values")
        _check(self.std is None or all(s > 0 for s in self.std), "std must be > 0")
        _check(self.input_size is None or self.input_size > 0, "input_size must be > 0")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The `data` section: the dataset, where its files are, the seeded splits and limits, and batch sizes."""

    name: str = "mnist"
    root: str | None = None  # folder with the dataset's own files; None = the copy shipped with roli, if any
    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 0
    split_seed: int = 0  # seeds the train/val carve; recorded with a hash of the membership
    val_fraction: float = 0.1
    train_limit: int | None = None  # use only the first N examples of a split (after the seeded carve)
    val_limit: int | None = None
    test_limit: int | None = None
    # Keep only these classes, renumbered 0..k-1 in the order given, e.g. [3, 4, 6, 7, 9]: a class-disjoint transfer
    # task from one dataset (pretrain on the other classes). Applied before the limits; recorded in results.json.
    classes: tuple[int, ...] | None = None
    # Image-folder datasets (Caltech-256, CUB-200, Stanford Dogs, image_folder): the reference's JSON split (a folder
    # with train.json/val.json/test.json, or one file with those three keys; each maps image path -> label).
    # None = the dataset's official split and the paper's per-class sizes, carved with `split_seed`.
    split_file: str | None = None
    skip_corrupt: bool = False  # skip unreadable images (counted in results.json) instead of stopping
    resize_size: int = 256  # train: Resize(resize_size) -> RandomCrop(crop_size) -> flip; eval: Resize -> CenterCrop
    crop_size: int = 224

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1")
        _check(self.crop_size >= 1 and self.resize_size >= self.crop_size, "need 1 <= crop_size <= resize_size")
        _check(self.num_workers >= 0, "num_workers must be >= 0")
        _check(self.split_seed >= 0, f"split_seed must be >= 0 (numpy's generators take no negative seed), got "
                                     f"{self.split_seed}")
        _check(0 < self.val_fraction < 1, "val_fraction must be in (0, 1)")
        for k in ("train_limit", "val_limit", "test_limit"):
            _check(getattr(self, k) is None or getattr(self, k) >= 1, f"{k} must be >= 1 or null")
        if self.classes is not None:
            _check(len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes) and min(self.classes) >= 0,
                   f"classes must list >= 2 distinct class numbers >= 0, got {list(self.classes)}")


@dataclass(frozen=True, kw_only=True)
class ThreatConfig:
    """The threat model, one section shared by training, validation, test and `roli eval` (no attack has its own
    eps, so none can silently differ: the reference's AutoAttack defaulted to 4/255, protocol B6)."""

    norm: Literal["linf", "l2"] = "linf"
    eps: float = 8 / 255  # in [0,1] pixel units; `8/255` is accepted in YAML

    def __post_init__(self) -> None:
        _check(self.eps >= 0, f"eps must be >= 0, got {self.eps}")
        _check(self.norm != "linf" or self.eps <= 1, f"an L-inf eps is in [0,1] pixel units; got {self.eps} (did you "
                                                     "mean {:g}/255?)".format(self.eps))


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """Base of every attack's config: the registered `name` picks the attack and its own config class, which holds
    only the fields that attack uses (so `fgsm` with `steps: 50` is an unknown-key error, not silently ignored)."""

    name: str = "pgd"
    trainable: ClassVar[bool] = False  # may serve as the training attack (PGD-AT)

    def warnings(self, threat: ThreatConfig) -> list[str]:
        """Settings that are legal but probably a mistake under `threat` (logged when a recipe is loaded)."""
        return []

    @classmethod
    def _resolve(cls, data: Mapping[str, Any]) -> type:
        return ATTACKS.get(data.get("name", cls.name)).config_cls


def attack_config(name: str = "pgd", **fields_: Any) -> AttackConfig:
    """The registered attack `name`'s config with `fields_` (e.g. `attack_config("pgd", steps=10)`)."""
    return from_dict(AttackConfig, {"name": name, **fields_}, name)


@dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """Which parameters adapt, and how the head starts. Methods subclass this with their own fields."""

    name: str = "linear_probe"
    # random head, the stage-1 adversarial linear-probe head (RoLI), or the stage-1 clean one (LP-FT, Kumar et al.)
    init: Literal["ranli", "roli", "lp_ft"] = "ranli"
    # The random head (RanLI, and RoLI's stage 1): `paper` = the reference's kaiming_normal(fan_out) weights
    # (std sqrt(2/C)) and bias -log(99) (protocol B12); `torch` = PyTorch's nn.Linear default weights, zero bias.
    head_init: Literal["paper", "torch"] = "torch"

    @classmethod
    def _resolve(cls, data: Mapping[str, Any]) -> type:
        return TRANSFER.get(data.get("name", cls.name)).config_cls


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """Base of every training objective's config (`train.objective`): the registered `name` picks the objective
    (roli.objectives: pgd_at, trades, mart) and its own config class, which holds only that objective's fields.
    `attack_loss`: the training attack's loss the objective needs (TRADES: `kl`), None = any but `kl`."""

    name: str = "pgd_at"
    attack_loss: ClassVar[str | None] = None

    @classmethod
    def _resolve(cls, data: Mapping[str, Any]) -> type:
        return OBJECTIVES.get(data.get("name", cls.name)).config_cls


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """An attack-strength schedule: a multiplier of the target value (threat.eps, attack.step_size, attack.steps) per
    epoch, so one recipe works at any eps. This base is `constant` (always 1); the others are registered in
    roli.training.schedules (linear, two_hinge, step_ramp), each with only its own fields."""

    name: str = "constant"

    def at(self, epoch: int) -> float:
        """The multiplier for epoch `epoch` (0-based), evaluated once at the epoch's start."""
        return 1.0

    @classmethod
    def _resolve(cls, data: Mapping[str, Any]) -> type:
        return SCHEDULES.get(data.get("name", cls.name))


@dataclass(frozen=True, kw_only=True)
class AttackScheduleConfig:
    """`train.attack_schedule`: the training attack's strength per epoch, as multipliers of the target. eps scales
    threat.eps (0 = a clean step, no attack pass); step_size scales the attack's step on top of eps (a PGD step is
    relative to eps: `step_size` used = attack.step_size x eps multiplier x step_size multiplier; FGSM-RS and N-FGSM
    steps are fractions of eps already); steps scales attack.steps (rounded, at least 1). Validation, test and
    `roli eval` always use the target threat model."""

    eps: ScheduleConfig = field(default_factory=ScheduleConfig)
    step_size: ScheduleConfig = field(default_factory=ScheduleConfig)
    steps: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass(frozen=True, kw_only=True)
class CoGuardConfig:
    """`train.co_guard`, the catastrophic-overfitting guard (roli.training.co_guard). Each epoch it compares the
    validation accuracy under `eval.attack` (PGD) with one under FGSM at the same eps; a collapse is PGD accuracy
    below `ratio` x FGSM accuracy *and* at least `gap` points below it. Then the weights and optimiser go back to
    the last good epoch, which is trained again with a stronger attack (`stronger`: one-step -> PGD-2, step eps/2;
    PGD-k -> PGD-2k), or training stops there (`stop`); at most `max_rollbacks` times, then it stops."""

    enabled: bool | None = None  # None = auto: on for one-step training attacks (fgsm, fgsm_rs, nfgsm, PGD-1)
    ratio: float = 0.5
    gap: float = 20.0  # accuracy points
    on_collapse: Literal["stronger", "stop"] = "stronger"
    max_rollbacks: int = 2

    def __post_init__(self) -> None:
        _check(0 < self.ratio <= 1, f"co_guard.ratio must be in (0, 1], got {self.ratio}")
        _check(0 <= self.gap <= 100, f"co_guard.gap is in accuracy points, in [0, 100]; got {self.gap}")
        _check(self.max_rollbacks >= 0, f"co_guard.max_rollbacks must be >= 0, got {self.max_rollbacks}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The `train` section: optimiser, schedule, precision and NaN policy of the transfer stage."""

    epochs: int = 5
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    no_decay: Literal["none", "bias", "bias_norm"] = "bias_norm"  # which parameters get weight decay 0
    momentum: float = 0.9  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    adam_eps: float = 1e-8
    warmup_epochs: float = 1.0  # linear warmup, per step, starting above 0 (protocol B5: no epoch at LR 0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    adversarial: bool = True  # False = standard training (the non-robust baseline)
    # Autocast for the training attack's forward/backward *and* the training step (losses and the attack's step
    # arithmetic stay fp32). fp16 uses a gradient scaler and needs CUDA; bf16 on a CPU needs native bf16 (AVX-512
    # BF16 or AMX), else roli falls back to fp32 with a warning (emulated bf16 is ~4x slower; ROLI_ALLOW_EMULATED_BF16=1
    # forces it). results.json records the precision requested and used (roli.precision).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # A NaN/inf training loss: `stop` (TrainingFailed, the last good checkpoint kept), or `skip` the batch (no
    # optimiser step; counted in the history as skipped_batches) and stop once more than max_skipped_batches were
    # skipped in the whole run.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_batches: int = 10
    # The loss (roli.objectives): pgd_at (Madry's PGD-AT, CE on x'), trades ({name: trades, beta: 6.0}, needs
    # attack.loss: kl) or mart ({name: mart, lam: 5.0}); the attack-strength schedule and the catastrophic-
    # overfitting guard (both: the classes above).
    # (Added in 0.3: at their defaults they leave config_hash, and so the stage-1 cache keys, as they were.)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig, metadata=SINCE_0_3)
    attack_schedule: AttackScheduleConfig = field(default_factory=AttackScheduleConfig, metadata=SINCE_0_3)
    co_guard: CoGuardConfig = field(default_factory=CoGuardConfig, metadata=SINCE_0_3)

    def __post_init__(self) -> None:
        _check(self.max_skipped_batches >= 0, f"max_skipped_batches must be >= 0, got {self.max_skipped_batches}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 <= self.momentum < 1, "momentum must be in [0, 1)")
        _check(all(0 <= b < 1 for b in self.betas), "betas must be in [0, 1)")
        _check(self.adam_eps > 0, "adam_eps must be > 0")
        _check(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs must be in [0, epochs]")
        _check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0 or null")


@dataclass(frozen=True, kw_only=True)
class Stage1Config(TrainConfig):
    """RoLI stage 1, adversarial linear probing: TrainConfig with SGD defaults as in the reference's linear recipes."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0


def _pgd(steps: int, select: str = "best") -> Any:
    return lambda: attack_config("pgd", steps=steps, select=select)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """The `eval` section: the validation/test attack, which epoch's weights are kept, and its precision."""

    attack: AttackConfig = field(default_factory=_pgd(10))  # validation (every epoch) and test attack
    select: Literal["robust", "clean", "last"] = "robust"  # which epoch's weights are kept
    # Reported numbers are attacked in fp32 unless asked otherwise (bf16 is checked to within 0.5 points in tests).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Stop attacking an example once it is misclassified: exact with per-example worst-case selection (it cannot
    # become robust again), so the accuracy is unchanged and the cost follows the still-robust fraction. An
    # evaluation-time switch (validation, test), never applied to the training attack. With PGD `select: last` only
    # the exact part applies: clean-misclassified examples and those broken by earlier restarts (PGD.evaluate).
    early_stop: bool = True


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The `run` section: seed, device, run-folder name and what a run keeps or logs besides its results."""

    seed: int = 0  # seeds torch, numpy and python's random
    name: str | None = None  # run folder name; None = the recipe's file name
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None  # torch CPU threads; None = the number of cores
    deterministic: bool = False  # deterministic algorithms (scoped to this run; CUDA: cuBLAS workspace set)
    # best.pt of a run that freezes the backbone stores only what trains plus the backbone file's identity (path,
    # SHA-256); `standalone_best: true` stores the whole model instead (e.g. to move it without the backbone file).
    standalone_best: bool = False
    keep_resume_state: bool = False  # keep checkpoint.pt (optimizer, RNG) after the run completes
    tensorboard: bool = False  # also log per-epoch scalars to run_dir/tensorboard (needs the tensorboard package)
    sync_bn: bool = False  # under torchrun: trainable BatchNorm layers as SyncBatchNorm (statistics over all ranks)
    compile: bool = False  # torch.compile the network (GPU: often faster after warm-up; CPU: measured no gain for ViTs)

    def __post_init__(self) -> None:
        lo, hi = SEED_RANGE
        _check(lo <= self.seed <= hi, f"seed must be in [-2**53, 2**53] (the data order is seeded with seed * 1000 + "
                                      f"epoch, a 64-bit number), got {self.seed}: choose a seed in that range")
        _check(self.threads is None or 1 <= self.threads <= THREADS_MAX,
               f"threads must be in [1, 2**31 - 1], or null for the number of cores; got {self.threads}")


def _check_training_attack(attack: AttackConfig, train: TrainConfig, where: str) -> None:
    """The training attack fits the objective (TRADES needs `attack.loss: kl`, nothing else takes it) and the
    schedules (a step_size or steps schedule needs an attack with that field)."""
    need, loss = type(train.objective).attack_loss, getattr(attack, "loss", None)
    if train.adversarial and need == "kl" and loss != "kl":
        raise ConfigError(f"{where}.objective {train.objective.name!r} crafts x' on the KL divergence to the clean "
                          f"prediction: set attack.loss: kl (pgd, fgsm_rs and nfgsm take it), got attack "
                          f"{attack.name!r} with loss {loss!r}")
    if need != "kl" and loss == "kl":
        raise ConfigError(f"attack.loss: kl is TRADES's inner loss; use it with {where}.objective: {{name: trades}}, "
                          f"or set attack.loss: ce for {where}.objective {train.objective.name!r}")
    for knob in ("step_size", "steps"):
        sched = getattr(train.attack_schedule, knob)
        if sched.name != "constant" and not hasattr(attack, knob):
            raise ConfigError(f"{where}.attack_schedule.{knob}: attack {attack.name!r} has no {knob} (its step is "
                              f"a fraction of eps, which the eps schedule scales); remove the {knob} schedule or "
                              "train with attack.name: pgd")


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole run, one frozen section per recipe key; the defaults are what a recipe gets when it omits a key.

    Build it with `load_config` (strict: unknown keys, wrong types and impossible values are errors); the training
    attack must be trainable (PGD, FGSM), and both attacks take their eps from the one `threat` section.

    Example:
        >>> cfg = roli.load_config("recipes/tiny/mnist_lora_roli.yaml")
        >>> cfg.transfer.name, cfg.transfer.init, cfg.threat.eps
        ('lora', 'roli', 0.1)
        >>> roli.Config().attack.steps  # all defaults: vit_tiny_28 on MNIST, linear probe, PGD-7 training
        7
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    attack: AttackConfig = field(default_factory=_pgd(7, "last"))  # the training attack (Madry's PGD-AT)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)  # RoLI stage 1 (adversarial linear probing)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        if not type(self.attack).trainable:
            can = [n for n in ATTACKS.names() if ATTACKS.get(n).config_cls.trainable]
            raise ConfigError(f"attack.name: {self.attack.name!r} cannot be a training attack; choose one of {can} "
                              "(evaluate with it via eval.attack or `roli eval --attack`)")
        _check_training_attack(self.attack, self.train, "train")
        if self.transfer.init == "roli":  # stage 1 trains with the same attack
            _check_training_attack(self.attack, self.stage1, "stage1")
        if getattr(self.eval.attack, "loss", None) == "kl":
            raise ConfigError("eval.attack.loss: kl is TRADES's training loss (the KL to the clean prediction, which "
                              "ignores the label); evaluate with loss: ce or margin")

    def warnings(self) -> list[str]:
        """Legal settings that are probably mistakes, e.g. a PGD step larger than eps."""
        return [f"{where}: {w}" for where, atk in (("attack", self.attack), ("eval.attack", self.eval.attack))
                for w in atk.warnings(self.threat)]


# --------------------------------------------------------------------------- strict loading

def _coerce_scalar(tp: Any, value: Any, where: str) -> Any:
    """A bool, int, float, str or Literal field's value, checked."""
    if isinstance(value, Mapping):  # e.g. `--set train.lr.x=1`
        raise ConfigError(f"{where} is one value, not a section with keys {shown(list(value))}: write "
                          f"`{where}=VALUE` with --set, or `{where.rpartition('.')[2]}: VALUE` in the recipe")
    if typing.get_origin(tp) is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {shown(value)} is not valid; choose one of {list(typing.get_args(tp))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {shown(value)}")
        if not INT64[0] <= value <= INT64[1]:
            raise ConfigError(f"{where}: {shown(value)} is outside [-2**63, 2**63 - 1], the 64-bit integers torch "
                              "and numpy take: give a smaller number")
        return value
    if tp is float:
        try:  # "8/255", and "1e-3" (which YAML 1.1 reads as a string)
            return parse_number(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a finite number (or a fraction like 8/255), got "
                              f"{shown(value)}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {shown(value)}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")  # pragma: no cover - a bug in a config class


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {shown(value)} does not fit {tp}")
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes, bytearray)):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}")
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ConfigError(f"{where}: expected {len(item_types)} values, got {len(value)}")
        return tuple(_coerce(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(item_types, value)))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    return _coerce_scalar(tp, value, where)


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys, wrong types and bad values raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping of keys, got {shown(data)}")
    if hasattr(cls, "_resolve"):
        if not isinstance(data.get("name", ""), str):
            raise ConfigError(f"{where}.name: expected a string (a registered name), got {shown(data['name'])}")
        try:
            cls = cls._resolve(data)
        except KeyError as e:
            raise ConfigError(f"{where}.name: {e.args[0]}".lstrip(".")) from None
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) [{', '.join(shown(k, 40) for k in unknown)}]; "
                          f"valid keys are {valid}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{where or 'recipe'}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON/YAML-safe dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _identity(cfg: Any) -> Any:
    """`to_dict(cfg)` without the fields added after a release (SINCE_0_3) that still hold their default: a new
    setting left alone must not change the identity of runs made before it existed (the stage-1 cache keys)."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("identity") == "omit_default" and f.default_factory is not dataclasses.MISSING \
                and value == f.default_factory():
            continue
        out[f.name] = _identity(value) if dataclasses.is_dataclass(value) else to_dict_value(value)
    return out


def to_dict_value(value: Any) -> Any:
    """A field value as JSON would hold it (tuples become lists)."""
    return json.loads(json.dumps(value))


def config_hash(*parts: Any) -> str:
    """A 16-hex-digit SHA-256 of configs (dataclasses) and plain values, e.g. to tell whether two runs match."""
    blob = json.dumps([_identity(p) for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


EMPTY_RECIPE = ("the recipe is empty: an empty recipe runs nothing you chose; a minimal recipe is `base:` a shipped "
                "recipe (a path relative to this file, e.g. recipes/tiny/mnist_base.yaml) plus the sections it "
                "changes, e.g. `transfer: {name: lora}`")


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe strictly (a key given twice, a tag or an empty file is an error); `base: other.yaml` (relative
    to this file) is loaded first and overridden (an `attack` or `eval.attack` that names another attack replaces
    the base's whole section: PGD's steps would not fit FGSM-RS)."""
    path = Path(path)
    try:
        resolved, found = path.resolve(), path.is_file()
        text = path.read_text() if found and resolved not in _seen else ""
    except (OSError, ValueError) as e:  # a name too long or holding a NUL; UnicodeDecodeError is a ValueError too
        name = str(path) if str(path).isprintable() else repr(str(path))
        raise ConfigError(f"{name[:120]}: cannot read the recipe ({type(e).__name__}: {str(e)[:200]})") from None
    if resolved in _seen:
        raise ConfigError(f"{path}: `base:` includes form a cycle: {' -> '.join(map(str, (*_seen, resolved)))}")
    if not found:
        raise ConfigError(f"{path}: recipe file not found")
    data = load_yaml(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: {EMPTY_RECIPE}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    if "base" in data:
        # `base: a.yaml` or `base: [a.yaml, b.yaml]`: later bases override earlier ones, this file overrides all.
        bases = data.pop("base")
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{path}: `base:` must be a file name or a list of file names, got {shown(bases)}")
        merged: dict[str, Any] = {}
        for base in bases:
            merged = _deep_merge(merged, read_yaml(path.parent / base, (*_seen, path.resolve())))
        data = _merge_overrides(merged, data)  # an attack whose `name` changes starts afresh, as with --set
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`train.epochs=3 attack.eps=8/255` -> nested dict; values are parsed as YAML scalars, an empty value is null
    (fine for an optional field, an error naming any other). No `=`, an empty key part (`train..lr`) or a key below
    one an earlier item set to a value (`train=3 train.lr=1`) is a ConfigError."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not sep or not all(parts):
            what = "no `=`" if not sep else "an empty key" if not key.strip() else f"an empty part in {key.strip()!r}"
            raise ConfigError(f"--set {shown(item)}: {what}; expected section.key=value, e.g. train.epochs=3")
        node = out
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {shown(item)}: an earlier --set gave {'.'.join(parts[:i + 1])} a value, "
                                  f"so it has no key {parts[i + 1]!r}; give one of the two")
        node[parts[-1]] = parse_scalar(raw, f"--set {shown(item)}") if raw.strip() else None
    return out


def parse_scalar(raw: str, where: str) -> Any:
    """A command-line value read as YAML (`3`, `0.1`, `8/255`, `[a, b]`, `true`), safely."""
    try:
        return load_yaml(raw, where)
    except ConfigError as e:
        detail = str(e).removeprefix(f"{where}: ").removeprefix("not valid YAML: ").splitlines()
        raise ConfigError(f"{where}: {shown(raw, 40)} is not a valid value ({detail[0] if detail else ''})") from None


# roli 0.1 keys -> today's: the threat model lived in `attack`, the evaluation attack was `eval.attack_*`.
_RENAMED = {"attack.norm": "threat.norm", "attack.eps": "threat.eps", "eval.attack_steps": "eval.attack.steps",
            "eval.attack_step_size": "eval.attack.step_size", "eval.restarts": "eval.attack.restarts",
            "transfer.head_bias": "transfer.head_init (focal -> paper, zero -> torch)",
            "train.amp": "train.precision (true -> bf16)"}


def _reject_old_style(raw: Mapping[str, Any], where: str) -> None:
    """A roli 0.1 recipe fails with the renames that convert it."""
    old = [k for k in _RENAMED if isinstance(sec := raw.get(k.split(".")[0]), Mapping) and k.split(".")[1] in sec]
    if old:
        raise ConfigError(f"{where}: roli 0.1 key(s) {old}: the threat model is now the `threat:` section and each "
                          f"attack has only its own fields; rename {'; '.join(f'{k} -> {_RENAMED[k]}' for k in old)} "
                          "(e.g. threat: {norm: linf, eps: 8/255}; eval: {attack: {name: pgd, steps: 10}})")


def upgrade(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A roli 0.1 config dict in today's layout (used for the error hint and to read 0.1 checkpoints)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    attack, ev = out.get("attack", {}), out.get("eval", {})
    threat = {k: attack.pop(k) for k in ("norm", "eps") if k in attack}
    if threat:
        out["threat"] = {**out.get("threat", {}), **threat}
    if any(k in ev for k in ("attack_steps", "attack_step_size", "restarts")):
        eval_attack = {k: v for k, v in attack.items() if k in ("name", "step_size", "random_start", "loss", "select")}
        if attack.get("name", "pgd") != "pgd":
            eval_attack = {"name": "pgd"}
        eval_attack["steps"] = ev.pop("attack_steps", 10)
        step = ev.pop("attack_step_size", None)
        if step is not None:
            eval_attack["step_size"] = step
        eval_attack["restarts"] = ev.pop("restarts", 1)
        ev["attack"] = eval_attack
    if "head_bias" in out.get("transfer", {}):
        bias = out["transfer"].pop("head_bias")
        if bias == "focal":  # the closest today: the reference's full RanLI head (weights and bias)
            out["transfer"]["head_init"] = "paper"
    if "amp" in out.get("train", {}):
        out["train"]["precision"] = "bf16" if out["train"].pop("amp") else "fp32"
    if attack.get("name") == "fgsm":  # 0.1 FGSM configs carried PGD's fields
        out["attack"] = {k: v for k, v in attack.items() if k in ("name", "loss")}
    return out


def _merge_overrides(raw: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`--set` merged into the recipe; an attack section whose `name` changes starts afresh (PGD's steps would not fit
    FGSM), keeping only the fields given on the command line."""
    out = _deep_merge(raw, over)
    for path in (("attack",), ("eval", "attack")):
        o, r, node = over, raw, out
        for k in path[:-1]:  # a section given a scalar (`--set eval=3`) is left to from_dict to refuse
            o, r, node = (o.get(k) or {}), (r.get(k) or {}), node.get(k, {})
            if not all(isinstance(m, Mapping) for m in (o, r, node)):
                break
        else:
            o_atk, r_atk = o.get(path[-1]), r.get(path[-1])
            if isinstance(o_atk, Mapping) and isinstance(r_atk, Mapping) and "name" in o_atk and \
                    o_atk["name"] != r_atk.get("name", AttackConfig.name):
                node[path[-1]] = dict(o_atk)
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), data: Mapping | None = None) -> Config:
    """Load a recipe (or a dict) strictly, then apply `--set` overrides, type-checked the same way.

    Args:
        path: a recipe YAML file; its `base:` files are read first and overridden by it.
        overrides: `section.key=value` strings, as `--set` takes them (values read as YAML, `8/255` allowed).
        data: a recipe as a dict, used when `path` is None.

    Example:
        >>> cfg = roli.load_config("recipes/tiny/mnist_full_roli.yaml", overrides=["train.epochs=3"])
        >>> cfg = roli.load_config(data={"transfer": {"name": "lora", "rank": 8}, "threat": {"eps": "8/255"}})
    """
    if path is None and data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"config: a recipe must be a mapping of sections, got {shown(data)}")
    raw = read_yaml(path) if path is not None else dict(data or {})
    where = str(path) if path is not None else "config"
    _reject_old_style(raw, where)
    try:
        cfg = from_dict(Config, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if overrides:
        raw = _merge_overrides(raw, parse_overrides(overrides))
        _reject_old_style(raw, "--set")
        try:
            cfg = from_dict(Config, raw, "")
        except ConfigError as e:
            raise ConfigError(f"--set: {e}") from None
    for w in cfg.warnings():
        log.warning("%s: %s", where, w)
    return cfg


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write `cfg` as a complete recipe (every default spelled out), which `load_config` reads back."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))  # a kill never leaves half a config
