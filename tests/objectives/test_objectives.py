"""roli.objectives: each loss against a direct few-line computation on fixed tensors, beta 0 TRADES = clean training,
the DDP scaling, expected robustness, and the config's pairing rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from roli.config import ConfigError, load_config
from roli.distributed import Shard
from roli.objectives import BatchMean, build_objective
from roli.objectives.mart import mart_rows
from roli.registry import OBJECTIVES

torch.manual_seed(0)
W = torch.randn(12, 5)  # a fixed linear "model" from 12 features to 5 classes
X = torch.rand(8, 12)
X_ADV = (X + 0.1 * torch.randn(8, 12)).clamp(0, 1)
Y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])


def objective(name: str, **fields):
    cfg = load_config(data={"train": {"objective": {"name": name, **fields}},
                            "attack": {"loss": "kl" if name == "trades" else "ce"}})
    return build_objective(cfg.train.objective)


def loss_and_grad(obj, x_adv=X_ADV, mean=None):
    w = W.clone().requires_grad_(True)
    loss, logits = obj.loss(lambda t: t @ w, X, x_adv, Y, mean or BatchMean())
    (g,) = torch.autograd.grad(loss, w)
    return loss.detach(), g, logits.detach()


def test_registered():
    assert set(OBJECTIVES.names()) >= {"pgd_at", "trades", "mart"}


def test_pgd_at_is_the_cross_entropy_on_x_adv():
    loss, _, logits = loss_and_grad(objective("pgd_at"))
    assert torch.equal(loss, F.cross_entropy(X_ADV @ W, Y)) and torch.equal(logits, X_ADV @ W)


def test_trades_matches_the_reference_formula():
    loss, _, logits = loss_and_grad(objective("trades", beta=6.0))
    # TRADES reference: CE(f(x)) + beta / N * KLDivLoss(sum)(log_softmax f(x'), softmax f(x))
    kl = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(X_ADV @ W, 1), F.softmax(X @ W, 1)) / len(Y)
    assert loss == pytest.approx((F.cross_entropy(X @ W, Y) + 6.0 * kl).item(), rel=1e-6)
    assert kl > 0.01 and torch.equal(logits, X_ADV @ W)  # train_acc counts x'


def test_trades_beta_zero_is_clean_training_exactly():
    obj = objective("trades", beta=0.0)
    assert not obj.needs_attack  # the loop runs no attack pass
    loss, grad, _ = loss_and_grad(obj)
    w = W.clone().requires_grad_(True)
    clean = F.cross_entropy(X @ w, Y)
    (g,) = torch.autograd.grad(clean, w)
    assert torch.equal(loss, clean.detach()) and torch.equal(grad, g)
    loss_none, grad_none, _ = loss_and_grad(obj, x_adv=None)  # and what the loop computes without x'
    assert torch.equal(loss_none, loss) and torch.equal(grad_none, grad)


def test_mart_matches_the_reference_code():
    loss, _, _ = loss_and_grad(objective("mart", lam=5.0))
    # MART's reference (Wang et al. 2020, train_mart.py), line by line
    logits, logits_adv = X @ W, X_ADV @ W
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == Y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, Y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, Y.unsqueeze(1)).squeeze()
    loss_robust = (1.0 / len(Y)) * torch.sum(torch.sum(
        torch.nn.KLDivLoss(reduction="none")(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    assert loss == pytest.approx((loss_adv + 5.0 * loss_robust).item(), rel=1e-5)


def test_mart_up_weights_examples_misclassified_clean():
    """The KL term's weight is 1 - p_y(x): an example the clean model gets right with certainty adds ~no KL."""
    logits = torch.tensor([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]])  # sure of class 0 for both; label 0, then 1
    logits_adv = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 0])
    lam0, lam1 = mart_rows(logits, logits_adv, y, 0.0), mart_rows(logits, logits_adv, y, 1.0)
    kl_second = -torch.log_softmax(logits_adv[1], 0)[1]  # KL(onehot(1) || p') = -log p'_1
    assert (lam1 - lam0)[0] == pytest.approx(0.0, abs=1e-6)  # only the misclassified one adds its KL
    assert (lam1 - lam0)[1] == pytest.approx(kl_second.item(), rel=1e-4) and kl_second > 0.5


@pytest.mark.parametrize("name", ["pgd_at", "trades", "mart"])
def test_sharded_losses_sum_to_the_global_mean(name):
    """Under DDP each rank's loss is scaled so that the all-reduced (averaged) gradient is the global batch's mean."""
    obj = objective(name)
    _, g_full, _ = loss_and_grad(obj)
    parts = [(0, 3), (3, 8)]  # two ranks: rows [0, 3) and [3, 8) of a global batch of 8
    grads = []
    for a, b in parts:
        w = W.clone().requires_grad_(True)
        loss, _ = obj.loss(lambda t, w=w: t @ w, X[a:b], X_ADV[a:b], Y[a:b], BatchMean(Shard(a, 8), world_size=2))
        grads.append(torch.autograd.grad(loss, w)[0])
    torch.testing.assert_close(sum(grads) / 2, g_full, rtol=1e-5, atol=1e-6)  # DDP averages over ranks


def test_trades_needs_the_kl_attack_and_kl_needs_trades():
    with pytest.raises(ConfigError, match=r"set attack.loss: kl"):
        load_config(data={"train": {"objective": {"name": "trades"}}})
    with pytest.raises(ConfigError, match=r"TRADES's inner loss.*attack.loss: ce"):
        load_config(data={"attack": {"loss": "kl"}})
    with pytest.raises(ConfigError, match="eval.attack.loss: kl"):
        load_config(data={"eval": {"attack": {"loss": "kl"}}})
    with pytest.raises(ConfigError, match="needs random_start"):
        load_config(data={"train": {"objective": {"name": "trades"}}, "attack": {"loss": "kl", "random_start": False}})
    with pytest.raises(ConfigError, match="unknown key.*'lam'"):
        load_config(data={"train": {"objective": {"name": "trades", "lam": 1}}, "attack": {"loss": "kl"}})
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        load_config(data={"train": {"objective": {"name": "trades", "beta": -1}}, "attack": {"loss": "kl"}})
    # standard training ignores the attack, so TRADES's pairing rule does not apply
    assert load_config(data={"train": {"objective": {"name": "trades"}, "adversarial": False}}).train.adversarial is False


def test_roli_stage1_is_checked_too():
    with pytest.raises(ConfigError, match="stage1.objective"):
        load_config(data={"transfer": {"name": "lora", "init": "roli"}, "attack": {"loss": "kl"},
                          "train": {"objective": {"name": "trades"}}})
    cfg = load_config(data={"transfer": {"name": "lora", "init": "roli"}, "attack": {"loss": "kl"},
                            "train": {"objective": {"name": "trades"}}, "stage1": {"objective": {"name": "trades"}}})
    assert cfg.stage1.objective.name == "trades"
