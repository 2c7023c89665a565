"""Direct alignment losses (DPO family, KTO): a registry ``PREFERENCE_LOSSES`` of ``LossSpec``.

Shared signature of every *paired* loss::

    fn(chosen_logps [B], rejected_logps [B], ref_chosen_logps [B] | None, ref_rejected_logps [B] | None, *,
       chosen_lengths [B], rejected_lengths [B], beta, normaliser=None, **variant_kwargs) -> (loss, metrics)

Symbols (written once here, used by every variant):

* ``chosen_logps`` = ``log π_θ(y_w | x)``, ``rejected_logps`` = ``log π_θ(y_l | x)``: **sums** of the
  completion's token log-probs under the policy; ``ref_*`` the same under the frozen reference ``π_ref``
  (``None`` for reference-free losses).
* ``chosen_lengths`` / ``rejected_lengths`` = ``|y_w|``, ``|y_l|``: completion token counts.
* ``beta`` = ``β`` (``τ`` in IPO, ``λ`` in ORPO — see each variant).
* ``logratios`` = ``log π_θ(y|x) − log π_ref(y|x)``; implicit reward ``r = β · logratio`` (DPO eq. 5 up to
  the partition function).
* ``normaliser`` replaces ``B`` in the mean over pairs by the global number of pairs across ranks and
  accumulation micro-batches (see ``reduce.aggregate``).

Metrics of every paired loss (local, detached): ``rewards/chosen``, ``rewards/rejected`` (means of the
variant's implicit reward, ``β·logratio`` unless the variant says otherwise), ``margin`` (mean of
chosen − rejected reward), ``accuracy`` (fraction with chosen reward > rejected, ties ½), plus
variant-specific extras.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from posttrain.losses.reduce import batch_mean, masked_mean

Metrics = dict[str, torch.Tensor]
_SHARED_PARAMS = frozenset({
    "chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
    "chosen_lengths", "rejected_lengths", "beta", "normaliser",
    "policy_logps", "ref_logps", "labels", "reference_point",
})


@dataclass(frozen=True)
class LossSpec:
    """A registered preference loss.

    ``fn``: the loss function; ``needs_reference``: whether the engine must compute reference-model
    log-probs (``ref_*`` are ``None`` otherwise); ``paired``: chosen/rejected pairs (``True``) or
    unpaired labelled completions (KTO); ``doc``: one-line description.
    """

    fn: Callable[..., tuple[torch.Tensor, Metrics]]
    needs_reference: bool
    paired: bool
    doc: str

    @property
    def variant_kwargs(self) -> tuple[str, ...]:
        """Names of the variant-specific keyword arguments (beyond the shared signature)."""
        code = self.fn.__code__  # keyword-only names follow the positional ones in co_varnames
        kwonly = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
        return tuple(n for n in kwonly if n not in _SHARED_PARAMS)


# ----------------------------------------------------------------------------------------------- helpers

def _check_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, needs_reference: bool):
    if chosen_logps.dim() != 1 or chosen_logps.shape != rejected_logps.shape:
        raise ValueError(f"chosen_logps {tuple(chosen_logps.shape)} and rejected_logps "
                         f"{tuple(rejected_logps.shape)} must both be [B]")
    if needs_reference and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError("this loss needs reference log-probs (ref_chosen_logps, ref_rejected_logps)")


def _logratios(logps: torch.Tensor, ref_logps: torch.Tensor | None) -> torch.Tensor:
    return logps if ref_logps is None else logps - ref_logps.to(logps.dtype)


def _pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, **extra) -> Metrics:
    with torch.no_grad():
        c, r = chosen_rewards.detach(), rejected_rewards.detach()
        d = c - r
        out = {
            "rewards/chosen": c.mean(),
            "rewards/rejected": r.mean(),
            "margin": d.mean(),
            "accuracy": ((d > 0).to(d.dtype) + 0.5 * (d == 0).to(d.dtype)).mean(),
        }
        out.update({k: torch.as_tensor(v).detach() for k, v in extra.items()})
    return out


def _lengths(lengths: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    lengths = torch.as_tensor(lengths, device=like.device).to(like.dtype)
    if lengths.shape != like.shape:
        raise ValueError(f"lengths {tuple(lengths.shape)} must match log-probs {tuple(like.shape)}")
    return lengths.clamp_min(1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(x))`` for ``x < 0``, accurate near 0 and for very negative ``x`` (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# ------------------------------------------------------------------------------------------ paired losses

def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
             chosen_lengths, rejected_lengths, beta: float, normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """DPO, sigmoid loss (Rafailov et al. 2023, eq. 7).

    ``L = −E[log σ(β·(log π_θ(y_w|x)/π_ref(y_w|x) − log π_θ(y_l|x)/π_ref(y_l|x)))]``

    Departures: none. Identical chosen and rejected give ``log 2``; as ``β → 0`` the loss tends to
    ``log 2 − β·h/2`` with ``h`` the log-ratio difference.
    """
    _check_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    chosen_lr = _logratios(chosen_logps, ref_chosen_logps)               # [B]
    rejected_lr = _logratios(rejected_logps, ref_rejected_logps)         # [B]
    h = chosen_lr - rejected_lr                                          # [B]
    losses = -F.logsigmoid(beta * h)                                     # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    return loss, _pair_metrics(beta * chosen_lr, beta * rejected_lr)


def cdpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
              chosen_lengths, rejected_lengths, beta: float, label_smoothing: float = 0.0,
              normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """Conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences").

    The preference label is assumed flipped with probability ``ε``; the loss is DPO's binary
    cross-entropy against the smoothed target ``1 − ε``:

    ``L = −E[(1 − ε)·log σ(β·h) + ε·log σ(−β·h)]``, ``h`` = chosen − rejected log-ratio.

    Symbols: ``label_smoothing`` = ``ε`` ∈ [0, 0.5). ``ε = 0`` is DPO. See also ``robust_dpo_loss``
    (Chowdhury et al. 2024), which uses the same ``ε`` but de-biases instead of smoothing.
    Departures: none.
    """
    _check_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_lr = _logratios(chosen_logps, ref_chosen_logps)               # [B]
    rejected_lr = _logratios(rejected_logps, ref_rejected_logps)         # [B]
    h = chosen_lr - rejected_lr                                          # [B]
    eps = label_smoothing
    losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)  # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    return loss, _pair_metrics(beta * chosen_lr, beta * rejected_lr)


def robust_dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                    chosen_lengths, rejected_lengths, beta: float, label_smoothing: float = 0.0,
                    normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """Robust DPO (rDPO; Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback").

    With labels flipped at rate ``ε``, the de-biased loss

    ``L̂ = E[((1 − ε)·ℓ(y_w, y_l) − ε·ℓ(y_l, y_w)) / (1 − 2ε)]``, ``ℓ(a, b) = −log σ(β·(logratio_a − logratio_b))``

    is an unbiased estimate of the clean DPO loss: ``(1 − ε)·L̂(y_w, y_l) + ε·L̂(y_l, y_w) = ℓ(y_w, y_l)``.
    Symbols: ``label_smoothing`` = ``ε`` ∈ [0, 0.5). ``ε = 0`` is DPO. Unlike cDPO, ``L̂`` can be negative.
    Departures: none.
    """
    _check_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_lr = _logratios(chosen_logps, ref_chosen_logps)               # [B]
    rejected_lr = _logratios(rejected_logps, ref_rejected_logps)         # [B]
    h = chosen_lr - rejected_lr                                          # [B]
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)  # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    return loss, _pair_metrics(beta * chosen_lr, beta * rejected_lr)


def ipo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
             chosen_lengths, rejected_lengths, beta: float, length_average: bool = True,
             normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17).

    ``L = E[(h − 1/(2τ))²]``, ``h = log(π_θ(y_w)·π_ref(y_l) / (π_θ(y_l)·π_ref(y_w)))``

    Symbols: ``beta`` = ``τ``. Minimum (zero loss) at ``h = 1/(2β)``.
    Departures: with ``length_average=True`` (default, the common implementation, e.g. TRL) each
    log-ratio is divided by its completion length, ``h = logratio_w/|y_w| − logratio_l/|y_l|``;
    ``length_average=False`` uses the paper's sequence sums. Reported rewards are ``β·logratio`` with
    the same (averaged or summed) log-ratios the loss uses.
    """
    _check_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    chosen_lr = _logratios(chosen_logps, ref_chosen_logps)               # [B]
    rejected_lr = _logratios(rejected_logps, ref_rejected_logps)         # [B]
    if length_average:
        chosen_lr = chosen_lr / _lengths(chosen_lengths, chosen_lr)      # [B]
        rejected_lr = rejected_lr / _lengths(rejected_lengths, rejected_lr)  # [B]
    h = chosen_lr - rejected_lr                                          # [B]
    losses = (h - 1.0 / (2.0 * beta)) ** 2                               # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    return loss, _pair_metrics(beta * chosen_lr, beta * rejected_lr)


def hinge_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
               chosen_lengths, rejected_lengths, beta: float, normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """Hinge (SLiC; Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    rank calibration loss; with the reference log-ratios of RSO, Liu et al. 2024).

    SLiC-HF: ``max(0, δ − log π_θ(y_w|x) + log π_θ(y_l|x))``. Here, with ``δ = 1/β`` and the loss scaled
    by ``β`` (which does not move the hinge):

    ``L = E[max(0, 1 − β·h)]``, ``h`` = chosen − rejected log-ratio against ``π_ref``.

    Departures: the reference log-ratios (RSO's form, as in common implementations) replace SLiC's raw
    log-probs; with ``ref_*=None`` (registered as ``"slic"``) it is SLiC's reference-free calibration
    loss. SLiC-HF's cross-entropy regulariser on SFT targets is not included (add an SFT term).
    """
    _check_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, False)
    chosen_lr = _logratios(chosen_logps, ref_chosen_logps)               # [B]
    rejected_lr = _logratios(rejected_logps, ref_rejected_logps)         # [B]
    h = chosen_lr - rejected_lr                                          # [B]
    losses = torch.relu(1.0 - beta * h)                                  # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    return loss, _pair_metrics(beta * chosen_lr, beta * rejected_lr)


def slic_loss(chosen_logps, rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
              chosen_lengths, rejected_lengths, beta: float, normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """SLiC-HF calibration loss without a reference (Zhao et al. 2023):
    ``L = E[max(0, 1 − β·(log π_θ(y_w|x) − log π_θ(y_l|x)))]`` (``δ = 1/β``, scaled by ``β``).
    Reference log-probs, if given, are ignored. See ``hinge_loss``."""
    return hinge_loss(chosen_logps, rejected_logps, None, None, chosen_lengths=chosen_lengths,
                      rejected_lengths=rejected_lengths, beta=beta, normaliser=normaliser)


def simpo_loss(chosen_logps, rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
               chosen_lengths, rejected_lengths, beta: float, gamma: float = 0.5,
               normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    eq. 6).

    ``L = −E[log σ(β/|y_w|·log π_θ(y_w|x) − β/|y_l|·log π_θ(y_l|x) − γ)]``

    Symbols: ``gamma`` = ``γ``, the target reward margin (absolute, not the ``γ/β`` ratio some
    implementations take). Reference-free: ``ref_*`` are ignored. Implicit reward reported:
    ``β/|y|·log π_θ(y|x)``. Departures: none.
    """
    _check_pair(chosen_logps, rejected_logps, None, None, False)
    chosen_r = beta * chosen_logps / _lengths(chosen_lengths, chosen_logps)        # [B]
    rejected_r = beta * rejected_logps / _lengths(rejected_lengths, rejected_logps)  # [B]
    losses = -F.logsigmoid(chosen_r - rejected_r - gamma)                # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    return loss, _pair_metrics(chosen_r, rejected_r)


def orpo_loss(chosen_logps, rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
              chosen_lengths, rejected_lengths, beta: float, normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    eqs. 4–7).

    ``P_θ(y|x) = exp(log π_θ(y|x) / |y|)`` (mean token log-prob), ``odds(y) = P/(1 − P)``,
    ``L = E[L_SFT + λ·L_OR]``, ``L_SFT = −log π_θ(y_w|x)/|y_w|``,
    ``L_OR = −log σ(log odds(y_w) − log odds(y_l))``.

    Symbols: ``beta`` = ``λ`` (weight of the odds-ratio term; the paper uses 0.1). Reference-free:
    ``ref_*`` are ignored. Implicit reward reported: ``λ·log odds(y)``.
    Departures: ``L_SFT`` is each pair's per-token mean NLL averaged over pairs (the loss only sees
    sequence sums), not one token mean over the whole batch.
    Extra metrics: ``nll`` (mean L_SFT), ``log_odds_ratio`` (mean), ``or_loss`` (mean L_OR).
    """
    _check_pair(chosen_logps, rejected_logps, None, None, False)
    mean_c = chosen_logps / _lengths(chosen_lengths, chosen_logps)       # [B]  log P_θ(y_w|x)
    mean_r = rejected_logps / _lengths(rejected_lengths, rejected_logps)  # [B]  log P_θ(y_l|x)
    log_odds_c = mean_c - _log1mexp(mean_c)                              # [B]
    log_odds_r = mean_r - _log1mexp(mean_r)                              # [B]
    log_odds_ratio = log_odds_c - log_odds_r                             # [B]
    or_loss = -F.logsigmoid(log_odds_ratio)                              # [B]
    nll = -mean_c                                                        # [B]
    losses = nll + beta * or_loss                                        # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    return loss, _pair_metrics(beta * log_odds_c, beta * log_odds_r, nll=nll.detach().mean(),
                               log_odds_ratio=log_odds_ratio.detach().mean(),
                               or_loss=or_loss.detach().mean())


def chosen_nll_term(chosen_logps, chosen_lengths, *, normaliser=None) -> torch.Tensor:
    """The NLL term of RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 2):
    ``L_NLL = −log π_θ(y_w|x) / |y_w|``, averaged over pairs. A stage adds ``α · L_NLL`` to any paired loss
    (``L_RPO = L_DPO + α·L_NLL``; the paper uses α = 1). It keeps the chosen completions' likelihood from
    falling while the margin grows — the usual DPO failure where both log-probs drop and the freed mass
    goes to text neither completion contains. ``chosen_logps`` are sums, as everywhere in this module.
    """
    nll = -chosen_logps / _lengths(chosen_lengths, chosen_logps)          # [B]
    return batch_mean(nll, normaliser=normaliser)


def apo_zero_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                  chosen_lengths, rejected_lengths, beta: float, normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions").

    ``r_w = β·logratio(y_w)``, ``r_l = β·logratio(y_l)``; paper: ``L = E[−σ(r_w) + σ(r_l)]`` — pushes the
    chosen likelihood up and the rejected down, each anchored to ``π_ref`` (use when the chosen
    answers are better than the model's own).

    Departures: a constant 1 is added, ``L = E[1 − σ(r_w) + σ(r_l)]`` ∈ (0, 2), so the loss is
    non-negative and equals 1 at ``π_θ = π_ref``; gradients are the paper's.
    """
    _check_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    r_w = beta * _logratios(chosen_logps, ref_chosen_logps)              # [B]
    r_l = beta * _logratios(rejected_logps, ref_rejected_logps)          # [B]
    losses = 1.0 - torch.sigmoid(r_w) + torch.sigmoid(r_l)               # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    return loss, _pair_metrics(r_w, r_l)


def apo_down_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                  chosen_lengths, rejected_lengths, beta: float, normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """APO-down (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions").

    ``r_w = β·logratio(y_w)``, ``r_l = β·logratio(y_l)``; paper: ``L = E[σ(r_w) − σ(r_w − r_l)]`` — pushes
    the chosen likelihood down while keeping the contrast (use when the model's own answers are
    better than the chosen ones).

    Departures: a constant 1 is added, ``L = E[1 + σ(r_w) − σ(r_w − r_l)]`` ∈ (0, 2), equal to 1 at
    ``π_θ = π_ref``; gradients are the paper's.
    """
    _check_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    r_w = beta * _logratios(chosen_logps, ref_chosen_logps)              # [B]
    r_l = beta * _logratios(rejected_logps, ref_rejected_logps)          # [B]
    losses = 1.0 + torch.sigmoid(r_w) - torch.sigmoid(r_w - r_l)         # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    return loss, _pair_metrics(r_w, r_l)


# ----------------------------------------------------------------------------------------------- KTO

def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point ``z_0 = max(0, mean(log π_θ(y'|x) − log π_ref(y'|x)))``, detached
    (Ethayarajh et al. 2024, §4: a biased batch estimate of ``KL(π_θ ‖ π_ref)`` from mismatched pairs
    ``(x_i, y_j)``, i.e. each prompt paired with another example's completion).

    ``policy_kl_logps`` / ``ref_kl_logps`` ``[B']``: sequence log-probs of the mismatched completions.
    For data parallelism, gather them (or their sum and count) across ranks before calling, so that
    every rank uses the same ``z_0`` (``posttrain.stages.dpo.kto_reference_point_across_ranks`` does).
    """
    with torch.no_grad():
        diff = (policy_kl_logps.detach() - ref_kl_logps.detach().to(policy_kl_logps.dtype))  # [B']
        return diff.mean().clamp_min(0.0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, *, beta: float,
             reference_point: float | torch.Tensor, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0, normaliser=None) -> tuple[torch.Tensor, Metrics]:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", §4).

    ``r(x, y) = log π_θ(y|x) − log π_ref(y|x)``, ``z_0`` = reference point,
    ``v(x, y) = λ_D·σ(β·(r − z_0))`` if ``y`` is desirable, ``λ_U·σ(β·(z_0 − r))`` if undesirable,
    ``L = E[λ_y − v(x, y)]``.

    Symbols: ``policy_logps`` / ``ref_logps`` ``[B]`` (sequence sums), ``labels`` ``[B]`` bool
    (``True`` = desirable), ``reference_point`` = ``z_0`` (treated as a constant; see
    ``kto_reference_point``), ``desirable_weight`` = ``λ_D``, ``undesirable_weight`` = ``λ_U``.
    ``normaliser`` replaces ``B`` by the global number of examples.
    Departures: none (``z_0`` is detached, as in the paper, where no gradient flows through it).
    Metrics: ``rewards/chosen`` / ``rewards/rejected`` = mean ``β·r`` over desirable / undesirable
    examples (0 if none), ``margin`` (their difference), ``kl`` (= ``z_0``), ``num_desirable``,
    ``num_undesirable``.
    """
    if policy_logps.dim() != 1 or policy_logps.shape != ref_logps.shape or labels.shape != policy_logps.shape:
        raise ValueError("policy_logps, ref_logps and labels must all be [B]")
    labels = labels.to(device=policy_logps.device, dtype=torch.bool)
    z0 = torch.as_tensor(reference_point, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    r = policy_logps - ref_logps.to(policy_logps.dtype)                  # [B]
    v_desirable = desirable_weight * torch.sigmoid(beta * (r - z0))      # [B]
    v_undesirable = undesirable_weight * torch.sigmoid(beta * (z0 - r))  # [B]
    lam = torch.where(labels, torch.full_like(r, desirable_weight), torch.full_like(r, undesirable_weight))  # [B]
    losses = lam - torch.where(labels, v_desirable, v_undesirable)       # [B]
    loss = batch_mean(losses, normaliser=normaliser)
    with torch.no_grad():
        rew = beta * r.detach()                                          # [B]
        chosen = masked_mean(rew, labels)
        rejected = masked_mean(rew, ~labels)
        metrics = {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "margin": chosen - rejected,
            "kl": z0,
            "num_desirable": labels.sum().to(rew.dtype),
            "num_undesirable": (~labels).sum().to(rew.dtype),
        }
    return loss, metrics


# ----------------------------------------------------------------------------------------------- registry

PREFERENCE_LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo_loss, needs_reference=True, paired=True,
                    doc="DPO sigmoid loss (Rafailov et al. 2023, eq. 7)"),
    "cdpo": LossSpec(cdpo_loss, needs_reference=True, paired=True,
                     doc="conservative DPO: label-smoothed DPO with flip rate label_smoothing (Mitchell 2023)"),
    "robust_dpo": LossSpec(robust_dpo_loss, needs_reference=True, paired=True,
                           doc="robust DPO: unbiased under label flips at rate label_smoothing "
                               "(Chowdhury et al. 2024)"),
    "ipo": LossSpec(ipo_loss, needs_reference=True, paired=True,
                    doc="IPO squared loss around 1/(2 beta), length-averaged log-ratios (Azar et al. 2023, eq. 17)"),
    "hinge": LossSpec(hinge_loss, needs_reference=True, paired=True,
                      doc="hinge max(0, 1 - beta h) on reference log-ratios (SLiC-HF / RSO)"),
    "slic": LossSpec(slic_loss, needs_reference=False, paired=True,
                     doc="SLiC-HF reference-free calibration hinge (Zhao et al. 2023)"),
    "simpo": LossSpec(simpo_loss, needs_reference=False, paired=True,
                      doc="SimPO length-normalised reference-free loss with margin gamma (Meng et al. 2024)"),
    "orpo": LossSpec(orpo_loss, needs_reference=False, paired=True,
                     doc="ORPO: chosen NLL + lambda * odds-ratio loss (Hong et al. 2024)"),
    "apo_zero": LossSpec(apo_zero_loss, needs_reference=True, paired=True,
                         doc="APO-zero: chosen up, rejected down, anchored (D'Oosterlinck et al. 2024)"),
    "apo_down": LossSpec(apo_down_loss, needs_reference=True, paired=True,
                         doc="APO-down: chosen down, contrast kept (D'Oosterlinck et al. 2024)"),
    "kto": LossSpec(kto_loss, needs_reference=True, paired=False,
                    doc="KTO unpaired desirable/undesirable loss (Ethayarajh et al. 2024)"),
}
