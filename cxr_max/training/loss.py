"""The APO loss: multi-negative Plackett-Luce preference optimisation, as pure tensor functions.

The method and the paper's equations: docs/method.md.

Inputs are sequence log-probabilities shaped ``[batch, 1 + K]``: column 0 is the positive (the consensus
trajectory), columns 1..K the negatives (the teachers' trajectories). The implicit reward of a candidate is
``r = beta * (log pi_theta - log pi_ref)`` (docs/method.md, "Reward and loss").

Top-1 Plackett-Luce (the paper's loss)::

    L = -log( exp(r+) / (exp(r+) + sum_u w_u exp(r_u)) ) = log(1 + sum_u w_u exp(r_u - r+))

Weights. ``negative_weights`` are normalised to mean 1 over the unmasked negatives of each row, so uniform
weights (or no weights) give exactly the paper's loss, and only the *relative* weights matter. A negative with
twice the weight counts as two copies of itself in the normaliser. With K = 1 and uniform weights the loss is
``-logsigmoid(r+ - r-)``, TRL's ``sigmoid`` DPO loss.

Full ranking (``ranking="full"``): when the negatives are ordered best to worst (column 1 best), the loss is the
negative log-likelihood of the whole order positive > neg_1 > ... > neg_K under a weighted Plackett-Luce model,
``sum_i -log( w_i exp(r_i) / sum_{j >= i} w_j exp(r_j) )`` with the positive's weight fixed at 1. Its first term
is the top-1 loss. A negative with weight 0 (or masked) takes no part at all: it has no stage of its own and adds
nothing to any denominator, so the loss and its gradients are those of the row without it (a stage term for it
would be ``-log(0)``, whose gradient pushes that negative *up*). This function trusts the given order;
:class:`~cxr_max.training.APOTrainer` sorts each row's negatives by their agreement with the consensus first
(``APOConfig.full_ranking_by``), so "best" means "closest to the consensus".

Everything is computed in float32 with ``logsumexp``/``logcumsumexp``, so large reward gaps neither overflow
nor produce NaN gradients; masked negatives get a large negative score instead of ``-inf`` for the same reason.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

Ranking = Literal["top1", "full"]
_MASKED_SCORE = -1e30  # finite stand-in for -inf: exp() underflows to exactly 0, gradients stay finite


@dataclasses.dataclass
class APOLossOutput:
    """Per-example results of :func:`apo_loss_terms`.

    Attributes:
        losses: ``[batch]`` per-example loss (preference term plus the optional NLL term).
        rewards: ``[batch, 1 + K]`` implicit rewards ``beta * (policy - reference)``, detached.
        negative_mask: ``[batch, K]`` bool, which negatives took part.
        metrics: scalar float metrics averaged over the batch: ``rewards/chosen``, ``rewards/rejected`` (mean over
            each row's valid negatives), ``rewards/margins`` (positive minus that mean), ``rewards/accuracies``
            (the positive beats every valid negative), ``nll`` (mean per-token NLL of the positive, when token
            counts were given).
    """

    losses: torch.Tensor
    rewards: torch.Tensor
    negative_mask: torch.Tensor
    metrics: dict[str, float]

    @property
    def loss(self) -> torch.Tensor:
        """Mean loss over the batch."""
        return self.losses.mean()


def _check_inputs(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> None:
    if policy_logps.shape != reference_logps.shape:
        raise ValueError(
            f"policy_logps {tuple(policy_logps.shape)} and reference_logps {tuple(reference_logps.shape)} differ in shape"
        )
    if policy_logps.dim() != 2 or policy_logps.shape[1] < 2:
        raise ValueError(
            f"log-probs must be shaped [batch, 1 + K] with K >= 1 negatives, got {tuple(policy_logps.shape)}"
        )


def normalise_negative_weights(
    negative_weights: torch.Tensor | None, negative_mask: torch.Tensor
) -> torch.Tensor:
    """Weights ``[batch, K]`` rescaled to mean 1 over each row's unmasked negatives (0 where masked).

    ``None`` means uniform weights. Raises ``ValueError`` for negative or non-finite weights, or a row whose
    unmasked weights sum to zero.
    """
    mask = negative_mask.bool()
    if negative_weights is None:
        return mask.float()
    w = negative_weights.detach().float()
    if w.shape != mask.shape:
        raise ValueError(f"negative_weights {tuple(w.shape)} must match the negatives {tuple(mask.shape)}")
    valid = w[mask]
    if not torch.isfinite(valid).all() or (valid < 0).any():
        raise ValueError("negative_weights must be finite and >= 0")
    w = torch.where(mask, w, torch.zeros_like(w))
    total = w.sum(dim=1, keepdim=True)
    count = mask.sum(dim=1, keepdim=True).float()
    if ((total <= 0) & (count > 0)).any():
        rows = torch.nonzero(((total <= 0) & (count > 0)).squeeze(1)).flatten().tolist()
        raise ValueError(f"negative_weights sum to zero over the unmasked negatives of batch row(s) {rows}")
    return w * count / total.clamp(min=torch.finfo(torch.float32).tiny)


def apo_loss_terms(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    beta: float = 0.1,
    negative_weights: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    ranking: Ranking = "top1",
    nll_weight: float = 0.0,
    positive_token_counts: torch.Tensor | None = None,
) -> APOLossOutput:
    """Per-example APO losses, rewards and metrics.

    Args:
        policy_logps: ``[batch, 1 + K]`` summed log-probs of each candidate under the trained policy
            (column 0 the positive).
        reference_logps: same shape, under the reference (the learn-stage model).
        beta: reward temperature (0.1 as in DPO and the released scripts).
        negative_weights: optional ``[batch, K]`` non-negative weights; normalised to mean 1 per row.
        negative_mask: optional ``[batch, K]`` bool, False for padding negatives (rows with fewer than K).
            Every row needs at least one valid negative.
        ranking: ``"top1"`` (the paper) or ``"full"`` (negatives ordered best to worst).
        nll_weight: weight of an extra per-token NLL term on the positive (0 disables it).
        positive_token_counts: ``[batch]`` completion-token counts of the positive; needed when
            ``nll_weight > 0`` (the NLL is averaged per token).
    """
    _check_inputs(policy_logps, reference_logps)
    if ranking not in ("top1", "full"):
        raise ValueError(f"ranking must be 'top1' or 'full', not {ranking!r}")
    batch, k = policy_logps.shape[0], policy_logps.shape[1] - 1
    if negative_mask is None:
        negative_mask = torch.ones(batch, k, dtype=torch.bool, device=policy_logps.device)
    negative_mask = negative_mask.bool()
    if negative_mask.shape != (batch, k):
        raise ValueError(f"negative_mask {tuple(negative_mask.shape)} must be shaped {(batch, k)}")
    empty = ~negative_mask.any(dim=1)
    if empty.any():
        raise ValueError(f"batch row(s) {torch.nonzero(empty).flatten().tolist()} have no valid negative")

    weights = normalise_negative_weights(negative_weights, negative_mask).to(policy_logps.device)
    log_w = torch.where(negative_mask, weights.clamp(min=1e-38).log(), torch.full_like(weights, _MASKED_SCORE))
    log_w = torch.where(negative_mask & (weights <= 0), torch.full_like(weights, _MASKED_SCORE), log_w)

    rewards = beta * (policy_logps.float() - reference_logps.float())
    # Scores of the weighted Plackett-Luce model; the positive's weight is 1 (log 1 = 0).
    scores = torch.cat([rewards[:, :1], rewards[:, 1:] + log_w], dim=1)
    if ranking == "top1":
        losses = torch.logsumexp(scores - scores[:, :1], dim=1)  # log(1 + sum w exp(r_u - r+))
    else:
        # Stage i: -(s_i - logsumexp_{j >= i} s_j); a reversed cumulative logsumexp gives every denominator.
        tail_lse = torch.logcumsumexp(scores.flip(1), dim=1).flip(1)
        # zero-weight negatives get no stage term (their score is _MASKED_SCORE, so they are out of every tail too)
        stage_valid = torch.cat([torch.ones_like(negative_mask[:, :1]), negative_mask & (weights > 0)], dim=1)
        stage = tail_lse - scores
        losses = torch.where(stage_valid, stage, torch.zeros_like(stage)).sum(dim=1)

    nll = None
    if nll_weight:
        if positive_token_counts is None:
            raise ValueError("nll_weight > 0 needs positive_token_counts")
        nll = -policy_logps[:, 0].float() / positive_token_counts.float().clamp(min=1)
        losses = losses + nll_weight * nll

    with torch.no_grad():
        r = rewards.detach()
        chosen = r[:, 0]
        neg = r[:, 1:]
        n_valid = negative_mask.sum(dim=1).clamp(min=1)
        mean_neg = torch.where(negative_mask, neg, torch.zeros_like(neg)).sum(dim=1) / n_valid
        max_neg = torch.where(negative_mask, neg, torch.full_like(neg, float("-inf"))).max(dim=1).values
        metrics = {
            "rewards/chosen": chosen.mean().item(),
            "rewards/rejected": mean_neg.mean().item(),
            "rewards/margins": (chosen - mean_neg).mean().item(),
            "rewards/accuracies": (chosen > max_neg).float().mean().item(),
        }
        if nll is not None:
            metrics["nll"] = nll.detach().mean().item()
    return APOLossOutput(losses=losses, rewards=r, negative_mask=negative_mask, metrics=metrics)


def apo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    beta: float = 0.1,
    negative_weights: torch.Tensor | None = None,
    negative_mask: torch.Tensor | None = None,
    ranking: Ranking = "top1",
    nll_weight: float = 0.0,
    positive_token_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean APO loss over the batch; see :func:`apo_loss_terms` for the arguments and the maths."""
    return apo_loss_terms(
        policy_logps,
        reference_logps,
        beta=beta,
        negative_weights=negative_weights,
        negative_mask=negative_mask,
        ranking=ranking,
        nll_weight=nll_weight,
        positive_token_counts=positive_token_counts,
    ).loss
