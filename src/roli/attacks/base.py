"""Attack base class: input-gradient only, eval mode, and model state always restored."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from roli.config import AttackConfig, ThreatConfig, attack_config
from roli.precision import FP32, Precision
from roli.registry import ATTACKS


@dataclass
class Outcome:
    """An attack's per-example verdicts on a batch (`Attack.evaluate`).

    `clean`: the clean input is classified correctly. `robust`: so is every point the attack tried (the clean input
    is one of them: it lies in the ball). `x_adv`: for a non-robust example a misclassified point, else the attack's
    worst-case point.
    """

    x_adv: torch.Tensor
    clean: torch.Tensor
    robust: torch.Tensor


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters while attacking; restored even if the attack raises.

    Parameters must not require grad during the attack: then backward computes input gradients only,
    which saves the weight-gradient half of every backward pass (protocol B14).
    """
    was_training = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in grads.items():
            p.requires_grad_(g)
        for m, t in was_training.items():
            m.train(t)


class Attack:
    """Call as `attack(model, x, y) -> x_adv`, with x in [0,1]; the model normalises internally. The threat model
    (norm, eps) is the run's `threat` section; the attack's own config holds only how it searches.

    `precision` (a resolved `roli.precision.Precision`, default fp32) is the autocast of the attack's model forwards;
    losses and the step arithmetic stay fp32, and x_adv keeps the input's dtype.

    Two entry points: `attack(model, x, y) -> x_adv` (training: every example, every step) and
    `attack.evaluate(model, x, y, early_stop=...) -> Outcome` (evaluation: per-example clean and robust verdicts;
    attacks that can do so exactly stop attacking an example once it is misclassified, see `PGD.evaluate`).
    """

    config_cls: type[AttackConfig] = AttackConfig

    def __init__(self, config: AttackConfig, threat: ThreatConfig, precision: Precision | None = None) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config
        self.threat = threat
        self.precision = precision or FP32

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, shard=None) -> torch.Tensor:
        """`shard` (roli.distributed.Shard): x is rows [start, start + len(x)) of a global batch of `size`
        rows; random starts are drawn for the whole global batch, so N ranks attack exactly as one process would."""
        self.precision.check_device(x.device)
        self.shard = shard
        with attack_mode(model), torch.enable_grad():
            x_adv = self.perturb(model, x.detach(), y)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The search itself, which subclasses implement: x_adv for (x, y), inside the threat model's ball and [0,1].
        Called by `__call__` in eval mode with frozen parameters and gradients enabled; x is detached."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for subclasses

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The model's logits under the attack's precision, returned in fp32 (or the input's dtype if wider)."""
        with self.precision.autocast():
            logits = model(x)
        return logits if logits.dtype == x.dtype else logits.to(torch.promote_types(logits.dtype, x.dtype))

    def input_grad(self, loss: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """d sum(loss) / d x_adv. In fp16 the loss is first multiplied by `Precision.attack_loss_scale` (1024) so that
        small gradients do not underflow to 0; the steps use only the gradient's sign (L-inf) or direction (L2),
        which the scale leaves unchanged. A NaN from an fp16 overflow becomes 0 (that pixel does not move)."""
        scale = self.precision.attack_loss_scale
        total = loss.sum() if scale == 1.0 else loss.sum() * scale
        (grad,) = torch.autograd.grad(total, x_adv)
        return grad if scale == 1.0 else torch.nan_to_num(grad, nan=0.0)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, early_stop: bool = True,
                 clean_logits: torch.Tensor | None = None, shard=None) -> Outcome:
        """Per-example verdicts for robust accuracy (see `Outcome`). `clean_logits`: the model's logits on `x` under
        this attack's precision, if the caller already has them (no clean forward is repeated).

        This generic version attacks every example, then classifies x_adv; it ignores `early_stop`. Attacks that can
        skip misclassified examples without changing any verdict override it (PGD, FGSM).
        """
        self.precision.check_device(x.device)
        x = x.detach()
        with attack_mode(model), torch.no_grad():
            if clean_logits is None:
                clean_logits = self.logits(model, x)
        clean = clean_logits.argmax(1) == y
        x_adv = self(model, x, y, shard=shard)
        with attack_mode(model), torch.no_grad():
            robust = clean & (self.logits(model, x_adv).argmax(1) == y)
        return Outcome(torch.where(_rows(clean, x), x_adv, x), clean, robust)


def build_attack(config: AttackConfig, threat: ThreatConfig, precision: Precision | None = None) -> Attack:
    """The registered attack for `config` under the threat model `threat`; its forwards autocast to `precision`.

    The recipe route: a run's `attack` (training) and `eval.attack` sections are AttackConfigs, and `threat` is the
    run's one threat model, so the attack cannot use another eps than the run.

    Example:
        >>> cfg = roli.load_config("recipes/tiny/mnist_lora_ranli.yaml")
        >>> attack = roli.build_attack(cfg.eval.attack, cfg.threat)  # the run's validation/test attack
        >>> x_adv = attack(model, x, y)  # x in [0,1], (N, C, H, W); model: a roli Classifier
    """
    return ATTACKS.get(config.name)(config, threat, precision=precision)


def make_attack(name: str = "pgd", *, eps: float, norm: str = "linf", precision: Precision | None = None,
                **fields) -> Attack:
    """The Python shortcut: an attack by name, with the threat model (`eps`, `norm`) and the attack's own fields
    given as keywords; the fields are checked as in a recipe (an unknown or wrong-typed field is a ConfigError).

    Example:
        >>> attack = roli.make_attack("pgd", eps=8/255, steps=10, step_size=2/255)
        >>> x_adv = attack(model, x, y)                      # x in [0,1]
        >>> outcome = attack.evaluate(model, x, y)           # per-example clean / robust verdicts
        >>> fgsm = roli.make_attack("fgsm", eps=0.5, norm="l2")
    """
    return build_attack(attack_config(name, **fields), ThreatConfig(norm=norm, eps=eps), precision=precision)
