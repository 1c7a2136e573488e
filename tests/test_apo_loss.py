"""The APO loss: hand-computed values, gradients, weights, masks, full ranking, and equality with TRL's DPO."""

import math

import pytest
import torch
import torch.nn.functional as F

from cxr_max.training.loss import apo_loss, apo_loss_terms, normalise_negative_weights


def _rand(batch, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1 + k, generator=g, dtype=torch.float64) * 5 - 40,
            torch.randn(batch, 1 + k, generator=g, dtype=torch.float64) * 5 - 40)


def test_hand_computed_value():
    policy = torch.tensor([[-10.0, -12.0, -9.0]])
    ref = torch.tensor([[-11.0, -11.0, -11.0]])
    beta = 0.5
    r = [beta * 1.0, beta * -1.0, beta * 2.0]
    expected = math.log(1 + math.exp(r[1] - r[0]) + math.exp(r[2] - r[0]))
    assert apo_loss(policy, ref, beta=beta).item() == pytest.approx(expected, rel=1e-6)


def test_k1_equals_dpo_sigmoid_formula():
    policy, ref = _rand(16, 1)
    beta = 0.1
    delta = (policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1])
    expected = (-F.logsigmoid(beta * delta)).mean()
    assert apo_loss(policy, ref, beta=beta).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_matches_hand_computation():
    policy, ref = _rand(3, 4, seed=1)
    policy = policy.float().requires_grad_(True)
    ref = ref.float()
    beta = 0.2
    apo_loss(policy, ref, beta=beta).backward()
    r = beta * (policy.detach() - ref)
    # L_b = log(1 + sum_u exp(r_u - r_+)); p_u = exp(r_u) / (exp(r_+) + sum exp(r_v)) (softmax over all candidates)
    p = torch.softmax(r, dim=1)
    expected = torch.empty_like(p)
    expected[:, 0] = -beta * (1 - p[:, 0])
    expected[:, 1:] = beta * p[:, 1:]
    expected /= r.shape[0]  # mean over the batch
    torch.testing.assert_close(policy.grad, expected, rtol=1e-5, atol=1e-7)


def test_uniform_weights_equal_no_weights_and_scale_invariant():
    policy, ref = _rand(4, 3, seed=2)
    base = apo_loss(policy, ref)
    assert apo_loss(policy, ref, negative_weights=torch.ones(4, 3)).item() == pytest.approx(base.item())
    assert apo_loss(policy, ref, negative_weights=torch.full((4, 3), 7.0)).item() == pytest.approx(base.item())


def test_weights_enter_the_normaliser():
    policy = torch.tensor([[0.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, 1.0, -1.0]])  # rewards: +0, -0.1, +0.1 with beta 0.1
    w = torch.tensor([[1.0, 3.0]])  # normalised to mean 1: 0.5, 1.5
    r = [0.0, -0.1, 0.1]
    expected = math.log(1 + 0.5 * math.exp(r[1]) + 1.5 * math.exp(r[2]))
    assert apo_loss(policy, ref, negative_weights=w).item() == pytest.approx(expected, rel=1e-6)
    assert normalise_negative_weights(w, torch.ones(1, 2, dtype=torch.bool)).tolist() == [[0.5, 1.5]]


def test_mask_equals_dropping_the_negative():
    policy, ref = _rand(1, 3, seed=3)
    mask = torch.tensor([[True, False, True]])
    masked = apo_loss(policy, ref, negative_mask=mask)
    dropped = apo_loss(policy[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    assert masked.item() == pytest.approx(dropped.item(), rel=1e-6)
    # a masked negative gets no gradient and nothing is NaN
    p = policy.clone().float().requires_grad_(True)
    apo_loss(p, ref.float(), negative_mask=mask, ranking="full").backward()
    assert torch.isfinite(p.grad).all() and p.grad[0, 2] == 0


def test_numerically_stable_for_huge_gaps():
    policy = torch.tensor([[0.0, 5000.0, -5000.0]], requires_grad=True)
    ref = torch.zeros(1, 3)
    loss = apo_loss(policy, ref, beta=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(5000.0, rel=1e-6)
    assert torch.isfinite(policy.grad).all()


def test_full_ranking_hand_computed_and_first_term_is_top1():
    policy = torch.tensor([[1.0, 0.5, -0.3]])
    ref = torch.zeros(1, 3)
    s = [1.0, 0.5, -0.3]  # beta 1
    e = [math.exp(x) for x in s]
    expected = -math.log(e[0] / sum(e)) - math.log(e[1] / (e[1] + e[2]))
    full = apo_loss(policy, ref, beta=1.0, ranking="full")
    assert full.item() == pytest.approx(expected, rel=1e-6)
    assert full.item() > apo_loss(policy, ref, beta=1.0).item()


def test_nll_term_and_metrics():
    policy = torch.tensor([[-4.0, -8.0], [-6.0, -1.0]])
    ref = torch.tensor([[-5.0, -5.0], [-5.0, -5.0]])
    out = apo_loss_terms(policy, ref, beta=1.0, nll_weight=0.5, positive_token_counts=torch.tensor([2, 3]))
    pref = torch.log1p(torch.exp(torch.tensor([-3.0 - 1.0, 4.0 - (-1.0)])))
    expected = pref + 0.5 * torch.tensor([4.0 / 2, 6.0 / 3])
    torch.testing.assert_close(out.losses, expected)
    assert out.metrics["rewards/accuracies"] == 0.5
    assert out.metrics["rewards/chosen"] == pytest.approx(0.0)
    assert out.metrics["rewards/margins"] == pytest.approx(((1 + 3) + (-1 - 4)) / 2)


@pytest.mark.parametrize("bad", ["no_negative", "negative_weight", "shape"])
def test_bad_inputs_raise(bad):
    policy, ref = _rand(2, 2)
    with pytest.raises(ValueError):
        if bad == "no_negative":
            apo_loss(policy, ref, negative_mask=torch.tensor([[True, True], [False, False]]))
        elif bad == "negative_weight":
            apo_loss(policy, ref, negative_weights=torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        else:
            apo_loss(policy, ref[:, :2])


def _sequence_logps(model, input_ids, attention_mask, completion_mask):
    """Plain, independent log-prob computation: full logits, log_softmax, gather the completion tokens."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logp * completion_mask[:, 1:]).sum(dim=1)


def test_k1_equals_trl_dpo_trainer_sigmoid_loss(tmp_path):
    """At K = 1 the APO loss equals the loss TRL's own DPOTrainer computes (loss_type='sigmoid')."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from cxr_max.training.tiny import tiny_lm

    texts = ["left effusion is present", "the heart is enlarged", "no acute finding", "what do you see"]
    policy, tok = tiny_lm(texts, tmp_path / "policy", seed=1)
    ref, _ = tiny_lm(texts, tmp_path / "ref", seed=2)
    rows = [
        {"prompt": "what do you see ", "chosen": "left effusion is present", "rejected": "no acute finding"},
        {"prompt": "what do you see ", "chosen": "the heart is enlarged", "rejected": "left effusion"},
        {"prompt": "what ", "chosen": "no acute finding", "rejected": "the heart is enlarged"},
    ]
    args = DPOConfig(str(tmp_path / "out"), beta=0.3, loss_type=["sigmoid"], bf16=False, use_cpu=True,
                     gradient_checkpointing=False, report_to="none", max_length=64)
    trainer = DPOTrainer(policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
        lp = _sequence_logps(trainer.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        lr = _sequence_logps(ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    n = len(rows)
    ours = apo_loss(torch.stack([lp[:n], lp[n:]], 1), torch.stack([lr[:n], lr[n:]], 1), beta=0.3)
    assert abs(trl_loss.item() - math.log(2)) > 1e-4  # the models differ, so this is not the trivial log 2
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-4, abs=1e-5)
