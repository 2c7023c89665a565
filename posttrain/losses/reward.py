"""Reward-model losses: pairwise Bradley–Terry (with margin and centring) and K-wise rankings (InstructGPT's
all-pairs loss and the Plackett–Luce likelihood)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from posttrain.losses.reduce import batch_mean


def _pair_accuracy(diff: torch.Tensor) -> torch.Tensor:
    """1 where the preferred response scores higher, 0 where lower, ½ on a tie."""
    return (diff > 0).to(diff.dtype) + 0.5 * (diff == 0).to(diff.dtype)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, *,
                       margin: torch.Tensor | None = None, centering_coef: float = 0.0,
                       normaliser: float | torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise Bradley–Terry reward-model loss.

    InstructGPT (Ouyang et al. 2022) eq. 1 for one pair (K = 2), with the Llama 2 margin
    (Touvron et al. 2023, eq. 2) and the reward-centring regulariser of Eisenstein et al. 2023
    ("Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking"):

    ``ℓ_b = −log σ(r_θ(x, y_c) − r_θ(x, y_r) − m(r)) + η · (r_θ(x, y_c) + r_θ(x, y_r))²``
    ``L = (1/B) Σ_b ℓ_b``

    Symbols: ``r_chosen`` ``[B]`` = ``r_θ(x, y_c)``, ``r_rejected`` ``[B]`` = ``r_θ(x, y_r)``,
    ``margin`` ``[B]`` = ``m(r)`` (Llama 2's preference-strength margin; ``None`` = 0),
    ``centering_coef`` = ``η``. ``normaliser`` replaces ``B`` by the global number of pairs (see
    ``reduce.aggregate``).

    Departures: none in the formula; the centring term is per pair and averaged with the BT term.
    Metrics (local): ``accuracy`` (fraction with ``r_c > r_r``, ties count ½), ``margin`` (mean
    ``r_c − r_r``), ``rewards/chosen``, ``rewards/rejected`` (means), ``bt_loss`` (the −log σ part),
    ``centering`` (mean ``(r_c + r_r)²``).
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} "
                         "must both be [B]")
    diff = r_chosen - r_rejected                                         # [B]
    logits = diff if margin is None else diff - margin                   # [B]
    bt = -F.logsigmoid(logits)                                           # [B]
    centring = (r_chosen + r_rejected) ** 2                              # [B]
    per_pair = bt + centering_coef * centring if centering_coef else bt  # [B]
    loss = batch_mean(per_pair, normaliser=normaliser)
    with torch.no_grad():
        metrics = {
            "accuracy": _pair_accuracy(diff).mean(),
            "margin": diff.mean(),
            "rewards/chosen": r_chosen.mean(),
            "rewards/rejected": r_rejected.mean(),
            "bt_loss": bt.mean(),
            "centering": centring.mean(),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def _pair_centring(rewards: torch.Tensor) -> torch.Tensor:
    """``1/C(K,2) · Σ_{i<j} (r_i + r_j)²`` per row of ``rewards`` ``[B, K]`` → ``[B]``."""
    K = rewards.shape[1]
    upper = torch.triu(torch.ones(K, K, dtype=rewards.dtype, device=rewards.device), diagonal=1)  # [K, K]
    return (((rewards.unsqueeze(2) + rewards.unsqueeze(1)) ** 2) * upper).sum(dim=(1, 2)) / math.comb(K, 2)


def kwise_ranking_loss(rewards: torch.Tensor, ranking: torch.Tensor, *, centering_coef: float = 0.0,
                       normaliser: float | torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """K-wise ranking loss for reward models (InstructGPT, Ouyang et al. 2022, eq. 1).

    ``ℓ_b = −1/C(K,2) · Σ_{(i, j): y_i ≻ y_j} log σ(r_θ(x, y_i) − r_θ(x, y_j))
            + η · 1/C(K,2) · Σ_{i<j} (r_θ(x, y_i) + r_θ(x, y_j))²``
    ``L = (1/B) Σ_b ℓ_b``

    Each of the ``C(K,2)`` pairs of a prompt is compared once, and each prompt counts once in the mean
    (InstructGPT's reason for batching all pairs of a prompt together).

    Symbols: ``rewards`` ``[B, K]`` = ``r_θ(x, y_k)``; ``ranking`` ``[B, K]`` (long) lists the indices
    ``k`` best first (``ranking[b, 0]`` is the best response); ``centering_coef`` = ``η``;
    ``normaliser`` replaces ``B`` by the global number of prompts.

    Departures: the centring term (Eisenstein et al. 2023) is not in InstructGPT; it is the pairwise
    Bradley–Terry regulariser averaged over the same ``C(K,2)`` pairs, so K = 2 reproduces
    ``bradley_terry_loss`` exactly. Ties are not supported (rankings are strict).
    Metrics (local): ``accuracy`` (fraction of pairs ordered correctly, ties ½), ``margin`` (mean
    ``r_better − r_worse`` over pairs), ``rewards/best``, ``rewards/worst``, ``rewards/mean``.
    """
    if rewards.dim() != 2 or ranking.shape != rewards.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and ranking {tuple(ranking.shape)} must both be [B, K]")
    B, K = rewards.shape
    if K < 2:
        raise ValueError(f"a ranking needs K >= 2 responses, got K={K}")
    ranking = ranking.to(device=rewards.device, dtype=torch.long)
    arange = torch.arange(K, device=rewards.device)                      # [K]
    if not torch.equal(ranking.sort(dim=-1).values, arange.expand(B, K)):
        raise ValueError("each row of ranking must be a permutation of 0..K-1")
    # position[b, k] = place of response k in the ranking (0 = best)
    position = torch.empty_like(ranking).scatter_(1, ranking, arange.expand(B, K).contiguous())  # [B, K]
    better = position.unsqueeze(2) < position.unsqueeze(1)               # [B, K, K]  y_i ≻ y_j
    diff = rewards.unsqueeze(2) - rewards.unsqueeze(1)                   # [B, K, K]  r_i − r_j
    n_pairs = math.comb(K, 2)
    betterf = better.to(rewards.dtype)                                   # [B, K, K]
    nll = -(F.logsigmoid(diff) * betterf).sum(dim=(1, 2)) / n_pairs      # [B]
    centring = _pair_centring(rewards)                                   # [B]
    per_prompt = nll + centering_coef * centring if centering_coef else nll  # [B]
    loss = batch_mean(per_prompt, normaliser=normaliser)
    with torch.no_grad():
        d = diff.detach()
        correct = ((d > 0).to(d.dtype) + 0.5 * (d == 0).to(d.dtype)) * betterf  # [B, K, K]
        r_best = rewards.detach().gather(1, ranking[:, :1]).squeeze(1)    # [B]
        r_worst = rewards.detach().gather(1, ranking[:, -1:]).squeeze(1)  # [B]
        metrics = {
            "accuracy": correct.sum() / (B * n_pairs),
            "margin": (d * betterf).sum() / (B * n_pairs),
            "rewards/best": r_best.mean(),
            "rewards/worst": r_worst.mean(),
            "rewards/mean": rewards.detach().mean(),
            "rank_loss": nll.detach().mean(),
        }
    return loss, metrics


def plackett_luce_loss(rewards: torch.Tensor, ranking: torch.Tensor, *, centering_coef: float = 0.0,
                       normaliser: float | torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plackett–Luce ranking loss: the negative log-likelihood of a whole ranking (Plackett 1975, Luce 1959;
    the K-wise MLE of Zhu, Jordan & Jiao 2023, "Principled Reinforcement Learning with Human Feedback from
    Pairwise or K-wise Comparisons", §4).

    With the responses in ranked order ``σ(0) ≻ σ(1) ≻ … ≻ σ(K−1)`` (best first), the ranking is built by
    picking the best of the remaining responses with softmax probability, K − 1 times:

    ``ℓ_b = −Σ_{i=0}^{K−2} log( exp r_θ(x, y_σ(i)) / Σ_{j=i}^{K−1} exp r_θ(x, y_σ(j)) )
            + η · 1/C(K,2) · Σ_{i<j} (r_θ(x, y_i) + r_θ(x, y_j))²``
    ``L = (1/B) Σ_b ℓ_b``

    Unlike :func:`kwise_ranking_loss` (which treats the ``C(K,2)`` pairs as independent comparisons), the
    choices here are of one response against ALL the lower-ranked ones at once; K = 2 is Bradley–Terry
    (``−log σ(r_σ(0) − r_σ(1))``). Adding a constant to a prompt's K rewards leaves the loss unchanged.

    Symbols: ``rewards`` ``[B, K]`` = ``r_θ(x, y_k)``; ``ranking`` ``[B, K]`` (long), indices best first;
    ``centering_coef`` = ``η``; ``normaliser`` replaces ``B`` by the global number of prompts.

    Departures: the centring term (Eisenstein et al. 2023) is not in either paper; it is the one of
    :func:`kwise_ranking_loss`. The likelihood is a sum over the K − 1 choices (not divided by K − 1), so a
    ranking of more responses weighs more, as in the MLE. Ties are not supported.
    Metrics (local): those of :func:`kwise_ranking_loss` (pairwise ``accuracy``, ``margin``, ``rewards/*``),
    with ``rank_loss`` the Plackett–Luce NLL.
    """
    _, metrics = kwise_ranking_loss(rewards.detach(), ranking)  # shape checks and the pairwise metrics
    ranking = ranking.to(device=rewards.device, dtype=torch.long)
    ordered = rewards.gather(1, ranking)                                 # [B, K]  best first
    tail_lse = torch.logcumsumexp(ordered.flip(-1), dim=-1).flip(-1)     # [B, K]  log Σ_{j≥i} exp r_σ(j)
    nll = (tail_lse - ordered)[:, :-1].sum(dim=-1)                       # [B]  (the i = K−1 term is 0)
    per_prompt = nll
    if centering_coef:
        per_prompt = nll + centering_coef * _pair_centring(rewards)      # [B]
    loss = batch_mean(per_prompt, normaliser=normaliser)
    metrics = {**metrics, "rank_loss": nll.detach().mean()}
    return loss, metrics
