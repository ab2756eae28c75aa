"""Early-stopping evaluation (`Attack.evaluate(..., early_stop=True)`): the same verdicts as the plain loop, at a
cost that follows the still-robust examples; the training attack (`attack(model, x, y)`) is untouched."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from roli.attacks import build_attack, make_attack
from roli.attacks.base import attack_mode
from roli.attacks.pgd import LOSSES, PGDConfig
from roli.backbones import build_model
from roli.config import BackboneConfig, DataConfig, ThreatConfig
from roli.data import build_data
from roli.evaluation.accuracy import accuracy, evaluate
from roli.threat import make_ball

pytestmark = pytest.mark.usefixtures("one_thread")


class RowCounter:
    """Counts forward calls and the rows (examples) they process, via a forward pre-hook."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = self.rows = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, inputs) -> None:
        self.calls += 1
        self.rows += inputs[0].shape[0]

    def reset(self) -> None:
        self.calls = self.rows = 0


def verdicts(attack, model, x, y, early_stop: bool, seed: int):
    torch.manual_seed(seed)
    return attack.evaluate(model, x, y, early_stop=early_stop)


def assert_exact(model, x, y, cfg: PGDConfig, eps: float, seed: int):
    """Per-example verdicts equal with and without early stop; broken examples' x_adv misclassify, inside the ball."""
    attack = build_attack(cfg, ThreatConfig(eps=eps))
    plain = verdicts(attack, model, x, y, False, seed)
    fast = verdicts(attack, model, x, y, True, seed)
    assert torch.equal(fast.clean, plain.clean)
    assert torch.equal(fast.robust, plain.robust)
    assert not (plain.robust & ~plain.clean).any()  # a misclassified clean input is never robust
    with torch.no_grad():
        for out in (plain, fast):
            wrong = model(out.x_adv).argmax(1) != y
            assert wrong[~out.robust].all() and not wrong[out.robust].any()
            assert (out.x_adv - x).abs().max() <= eps + 1e-6 and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    # the RNG stream after the attack is the same too (random starts are drawn for the whole batch)
    torch.manual_seed(seed)
    attack.evaluate(model, x, y, early_stop=True)
    after_fast = torch.rand(3)
    torch.manual_seed(seed)
    attack.evaluate(model, x, y, early_stop=False)
    assert torch.equal(after_fast, torch.rand(3))
    return plain


@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_early_stop_is_exact_on_the_robust_mlp(robust_mlp, seed, eps, restarts):
    model, loader, x, y = robust_mlp
    cfg = PGDConfig(steps=10, step_size=eps / 4, restarts=restarts)
    plain = assert_exact(model, x, y, cfg, eps, seed)
    assert 0 < plain.robust.sum() < plain.clean.sum()  # some examples break, some do not: early stop has work to do
    torch.manual_seed(seed)
    fast_acc = accuracy(model, loader, build_attack(cfg, ThreatConfig(eps=eps)), early_stop=True)
    torch.manual_seed(seed)
    plain_acc = accuracy(model, loader, build_attack(cfg, ThreatConfig(eps=eps)), early_stop=False)
    assert fast_acc["acc"] == plain_acc["acc"] and fast_acc["n"] == plain_acc["n"] == len(y)
    assert fast_acc["clean"]["acc"] == plain_acc["clean"]["acc"]
    assert fast_acc["early_stop"] is True and plain_acc["early_stop"] is False


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.15), ("l2", 1.5)])
def test_early_stop_is_exact_for_both_norms_and_losses(robust_mlp, norm, eps, loss):
    model, _, x, y = robust_mlp
    cfg = PGDConfig(steps=8, step_size=eps / 4, restarts=2, loss=loss)
    attack = build_attack(cfg, ThreatConfig(norm=norm, eps=eps))
    plain, fast = (verdicts(attack, model, x, y, es, 5) for es in (False, True))
    assert torch.equal(fast.robust, plain.robust) and 0 < plain.robust.sum() < plain.clean.sum()


def probed_vit(n_train: int = 2000) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The shipped robust tiny ViT backbone (PGD-AT on Fashion-MNIST, eps 0.1; shipped without a head) with a head
    fitted on clean features of `n_train` Fashion-MNIST training images (seeded; a few seconds); plus the test split."""
    data = build_data(DataConfig(name="fashion_mnist"))
    model = build_model(BackboneConfig(name="vit_tiny_28_fmnist_robust"), 10).eval()

    def images(split, idx: torch.Tensor) -> torch.Tensor:
        return split.images[idx].float().div(255).reshape(len(idx), 1, 28, 28)

    idx = torch.randperm(len(data.train.labels), generator=torch.Generator().manual_seed(0))[:n_train]
    with torch.no_grad():
        feats = model.net.forward_head(model.net.forward_features(model.normalize(images(data.train, idx))),
                                       pre_logits=True)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.head.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.head(feats), data.train.labels[idx]).backward()
        opt.step()
    test_idx = torch.arange(len(data.test.labels))
    return model.eval(), images(data.test, test_idx), data.test.labels


@pytest.fixture(scope="module")
def robust_vit(one_thread):
    """`probed_vit` and 64 evenly spaced Fashion-MNIST test images."""
    model, x, y = probed_vit()
    idx = torch.arange(0, len(y), len(y) // 64)[:64]
    return model, x[idx], y[idx]


@pytest.mark.parametrize("seed, eps, restarts", [(0, 0.1, 1), (1, 0.15, 3), (2, 0.05, 3)])
def test_early_stop_is_exact_on_a_tiny_vit(robust_vit, seed, eps, restarts):
    model, x, y = robust_vit
    assert (model(x).argmax(1) == y).float().mean() >= 0.6  # a trained model
    plain = assert_exact(model, x, y, PGDConfig(steps=4, step_size=eps / 3, restarts=restarts), eps, seed)
    assert 0 < plain.robust.sum() < plain.clean.sum()


def test_early_stop_cost_follows_the_robust_examples(robust_mlp):
    """Model forwards (counted per example) drop with early stop, bounded by the robust and the clean-correct counts."""
    model, _, x, y = robust_mlp
    steps, restarts, eps = 10, 3, 0.2
    attack = make_attack("pgd", eps=eps, step_size=eps / 4, steps=steps, restarts=restarts)
    counter = RowCounter(model)
    try:
        plain = verdicts(attack, model, x, y, False, 0)
        plain_rows, plain_calls = counter.rows, counter.calls
        counter.reset()
        fast = verdicts(attack, model, x, y, True, 0)
        fast_rows, fast_calls = counter.rows, counter.calls
        assert torch.equal(fast.robust, plain.robust)
    finally:
        counter.handle.remove()
    n, n_clean, n_robust = len(y), int(plain.clean.sum()), int(plain.robust.sum())
    per_example = (steps + 1) * restarts  # forwards of an example attacked to the end (+1: each restart's final)
    assert plain_rows == n + per_example * n  # the plain loop: one clean forward, then everything
    assert fast_calls <= plain_calls
    attacked = fast_rows - n  # rows beyond the clean pass
    assert per_example * n_robust <= attacked <= per_example * n_clean  # robust ones run to the end; broken stop
    assert attacked < 0.5 * per_example * n  # here ~20% robust: far less than the plain loop
    # roughly proportional: within a small factor of the cost of attacking only the robust examples
    assert attacked <= 3 * per_example * n_robust


def test_select_last_stops_across_restarts_but_not_within_one(robust_mlp):
    """With `select: last` an example broken mid-restart can be correct again at its last iterate, so each restart
    runs to the end on every example it starts with; examples broken by earlier restarts (or clean) are skipped."""
    model, _, x, y = robust_mlp
    steps, eps = 6, 0.2
    cfg = PGDConfig(steps=steps, step_size=eps / 4, select="last")
    counter = RowCounter(model)
    try:
        one = verdicts(build_attack(cfg, ThreatConfig(eps=eps)), model, x, y, True, 0)
        assert counter.rows == len(y) + (steps + 1) * int(one.clean.sum())  # no in-restart stop
        counter.reset()
        cfg3 = dataclasses.replace(cfg, restarts=3)
        fast = verdicts(build_attack(cfg3, ThreatConfig(eps=eps)), model, x, y, True, 0)
        fast_rows = counter.rows
        counter.reset()
        plain = verdicts(build_attack(cfg3, ThreatConfig(eps=eps)), model, x, y, False, 0)
    finally:
        counter.handle.remove()
    assert torch.equal(fast.robust, plain.robust)
    assert fast_rows < counter.rows


def test_fgsm_early_stop_attacks_only_clean_correct_examples(robust_mlp):
    model, _, x, y = robust_mlp
    attack = make_attack("fgsm", eps=0.15)
    counter = RowCounter(model)
    try:
        fast = attack.evaluate(model, x, y, early_stop=True)
        assert counter.rows == len(y) + 2 * int(fast.clean.sum())  # clean pass, then one step + final forward
        plain = attack.evaluate(model, x, y, early_stop=False)
    finally:
        counter.handle.remove()
    assert torch.equal(fast.robust, plain.robust)


def test_evaluate_takes_the_clean_accuracy_from_the_attack_pass(robust_mlp):
    """`evaluate({"clean": None, "pgd": ...})` makes one clean forward per batch (shared with the attack, which also
    uses it to skip misclassified examples) and never classifies x_adv again."""
    model, loader, _, y = robust_mlp
    attack = make_attack("pgd", eps=0.1, step_size=0.025, steps=5)
    counter = RowCounter(model)
    try:
        torch.manual_seed(0)
        both = evaluate(model, loader, {"clean": None, "pgd": attack})
        rows_both = counter.rows
        counter.reset()
        torch.manual_seed(0)
        alone = accuracy(model, loader, attack)
        rows_alone = counter.rows
        counter.reset()
        clean_only = accuracy(model, loader)
    finally:
        counter.handle.remove()
    assert list(both) == ["clean", "pgd"] and "clean" not in both["pgd"]
    assert rows_both == rows_alone  # no separate clean pass
    assert both["clean"]["acc"] == clean_only["acc"] == alone["clean"]["acc"]
    assert both["pgd"]["acc"] == alone["acc"] <= both["clean"]["acc"]
    assert counter.rows == clean_only["n"] == len(y)  # a clean-only pass: one forward per example


# --------------------------------------------------------------------------- the training attack is untouched


def pgd_before_early_stop(model, x, y, cfg: PGDConfig, threat: ThreatConfig) -> torch.Tensor:
    """roli's PGD.perturb as it was before precision and early stopping (commit 3c3e53e), for bit comparison."""
    ball, loss_fn = make_ball(threat.norm, threat.eps), LOSSES[cfg.loss]
    best_x = x.clone()
    best_wrong = torch.zeros(x.shape[0], dtype=torch.bool)
    best_loss = torch.full((x.shape[0],), float("-inf"))

    def keep(x_cand, logits):
        loss = loss_fn(logits.detach().float(), y)
        wrong = logits.argmax(1) != y
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        best_x[better] = x_cand[better].detach()
        best_wrong[better], best_loss[better] = wrong[better], loss[better]

    with attack_mode(model), torch.enable_grad():
        for _ in range(cfg.restarts):
            x_adv = ball.random_init(x) if cfg.random_start else x.clone()
            for _ in range(cfg.steps):
                x_adv.requires_grad_(True)
                logits = model(x_adv)
                (grad,) = torch.autograd.grad(loss_fn(logits, y).sum(), x_adv)
                if cfg.select == "best":
                    keep(x_adv, logits)
                x_adv = ball.project(ball.step(x_adv.detach(), grad, cfg.step_size), x)
            with torch.no_grad():
                logits = model(x_adv)
            if cfg.select == "best" or cfg.restarts > 1:
                keep(x_adv, logits)
            else:
                best_x = x_adv
    return best_x


@pytest.mark.parametrize("select, restarts, norm", [("best", 1, "linf"), ("best", 2, "l2"), ("last", 1, "linf"),
                                                    ("last", 2, "linf")])
def test_training_attack_is_bit_identical_to_before(robust_mlp, select, restarts, norm):
    model, _, x, y = robust_mlp
    eps = 0.15 if norm == "linf" else 1.5
    cfg, threat = PGDConfig(steps=5, step_size=eps / 4, restarts=restarts, select=select), ThreatConfig(norm=norm,
                                                                                                        eps=eps)
    torch.manual_seed(4)
    ours = build_attack(cfg, threat)(model, x, y)
    torch.manual_seed(4)
    before = pgd_before_early_stop(model, x, y, cfg, threat)
    assert torch.equal(ours, before)


class PeakAtHalf(nn.Module):
    """Logits [-(sum(x - 0.5))^2, 0]: for label 1 the CE loss is highest at x = 0.5, where the prediction ties and
    resolves to class 0 (misclassified); any perturbation lowers the loss and is classified correctly."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x - 0.5).flatten(1).sum(1)
        return torch.stack([-(s**2), torch.zeros_like(s)], 1)


def test_only_evaluation_scores_the_clean_input():
    """The clean input is the evaluation's candidate 0 (it lies in the ball); the training attack still returns the
    best PGD iterate, as before."""
    model, x, y = PeakAtHalf(), torch.full((4, 1, 4, 4), 0.5), torch.ones(4, dtype=torch.long)
    cfg, threat = PGDConfig(steps=3, step_size=0.02), ThreatConfig(eps=0.05)
    torch.manual_seed(0)
    trained_on = build_attack(cfg, threat)(model, x, y)
    torch.manual_seed(0)
    assert torch.equal(trained_on, pgd_before_early_stop(model, x, y, cfg, threat))
    assert (trained_on != x).flatten(1).any(1).all()
    out = build_attack(cfg, threat).evaluate(model, x, y)
    assert not out.clean.any() and not out.robust.any() and torch.equal(out.x_adv, x)


# --------------------------------------------------------------------------- the run and `roli eval` record it


def test_runs_and_roli_eval_record_early_stop(finished_run, tmp_path, capsys):
    from roli.cli.main import main

    run_dir, res, cfg = finished_run
    assert res["test"]["early_stop"] is True and cfg.eval.early_stop
    outs = {}
    for flag in ([], ["--no-early-stop"]):
        out = tmp_path / f"eval{len(flag)}.json"
        assert main(["eval", "--checkpoint", str(run_dir / "best.pt"), "--output", str(out), *flag]) == 0
        outs[bool(flag)] = json.loads(out.read_text())
    capsys.readouterr()
    assert outs[False]["early_stop"] is True and outs[True]["early_stop"] is False
    assert outs[False]["results"]["pgd"]["acc"] == outs[True]["results"]["pgd"]["acc"] == res["test"]["pgd"]
    assert outs[False]["results"]["clean"]["acc"] == res["test"]["clean"]


def test_eval_early_stop_false_is_the_plain_loop_in_a_run(fast_cfg, tmp_path, monkeypatch):
    from roli.evaluation import accuracy as acc_module
    from roli.training import pipeline, trainer

    seen = []
    real = acc_module.evaluate

    def spy(model, loader, attacks, **kw):
        seen.append(kw.get("early_stop"))
        return real(model, loader, attacks, **kw)

    monkeypatch.setattr(trainer, "evaluate", spy)
    monkeypatch.setattr(pipeline, "evaluate", spy)
    res = pipeline.run(fast_cfg(["eval.early_stop=false", "train.epochs=1"]), out=tmp_path, name="plain")
    assert seen == [False, False]  # validation and test
    assert res["test"]["early_stop"] is False
