"""The pieces of ``posttrain rl`` that differ between algorithms, composed from ``posttrain.losses``.

Every algorithm of :mod:`posttrain.stages.rl` is a bandit problem (one response, one reward) with a
KL regulariser towards a frozen reference ``π_ref``. They differ only in

1. how the advantages ``Â`` are estimated from a scored rollout (:data:`ADVANTAGE_ESTIMATORS`), and
2. which policy-gradient loss consumes them (:data:`posttrain.losses.policy.POLICY_LOSSES`, chosen by
   ``cfg.policy_loss``; ``auto`` = PPO clip for ppo/grpo, REINFORCE for reinforce/rloo).

Symbols (as in the losses): ``N = prompts_per_step · G`` completions, row ``i`` sampled for prompt
``i // G``; ``L`` token positions of the rollout (prompt left-padded + completion right-padded);
``scores`` ``[N]`` = ``r(x, y)`` (reward sources + missing-EOS penalty); ``logprobs`` ``[N, L]`` =
``log π_θold`` of the sampled tokens at the sampling temperature; ``ref_logprobs`` ``[N, L]`` =
``log π_ref``; ``mask`` ``[N, L]`` the completion tokens (stop token included); ``values`` ``[N, L]`` =
``V(x_<t)`` (the value of the state in which token ``t`` is chosen; PPO only); ``β`` the KL coefficient.

KL placement (``cfg.kl_mode``):

* ``reward`` — in the reward. PPO: a per-token penalty ``−β·kl_t`` plus the score at the last token
  (Ziegler et al. 2019; InstructGPT), then GAE. Sequence-level algorithms use that reward's sum over the
  tokens, ``score − β·Σ_t kl_t`` (Ahmadian et al. 2024 put the KL in the reward for RLOO/REINFORCE).
* ``loss`` — not in the reward; ``β · agg_t kl_t`` is added to the loss (GRPO, Shao et al. 2024, with k3).

Advantages, returns and old values are computed once per rollout without gradient (detached
constants); the losses detach them again.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from posttrain.data.packing import prefix_sharing_mask
from posttrain.errors import ConfigError
from posttrain.losses.advantages import gae, grpo_advantages, reinforce_baseline, rloo_advantages, whiten
from posttrain.losses.kl import kl_loss_term, kl_penalised_rewards
from posttrain.losses.policy import POLICY_LOSSES
from posttrain.losses.reduce import masked_mean
from posttrain.losses.value import clipped_value_loss

__all__ = ["Scored", "Advantages", "ADVANTAGE_ESTIMATORS", "policy_loss_spec", "RLObjective",
           "shift_values", "forward_policy", "pack_groups", "select_groups"]


@dataclass
class Scored:
    """One scored rollout, the input of an advantage estimator (all detached, on one device)."""

    scores: torch.Tensor          # [N]
    logprobs: torch.Tensor        # [N, L]  log π_θold (sampling policy, temperature T)
    ref_logprobs: torch.Tensor    # [N, L]  log π_ref
    mask: torch.Tensor            # [N, L]  float, completion tokens
    group_size: int               # G
    values: torch.Tensor | None = None  # [N, L]  V(x_<t) (ppo)


@dataclass
class Advantages:
    advantages: torch.Tensor      # [N] (one per sequence) or [N, L] (per token)
    returns: torch.Tensor | None  # [N, L] value targets (ppo), else None
    metrics: dict[str, float]


# ------------------------------------------------------------------------------- advantage estimators
def _shaped_rewards(s: Scored, cfg, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token rewards ``[N, L]``: the score at the last completion token, and ``−β·kl_t`` at every
    completion token when the KL is in the reward (``kl_mode=reward``); β = 0 otherwise."""
    b = beta if cfg.resolved_kl_mode == "reward" else 0.0
    rewards, m = kl_penalised_rewards(s.scores, s.logprobs, s.ref_logprobs, s.mask, beta=b,
                                      estimator=cfg.resolved_kl_estimator)      # [N, L]
    return rewards, {"non_score_reward": float(m["non_score_reward"])}


def ppo_advantages(s: Scored, cfg, beta: float) -> Advantages:
    """PPO (Schulman et al. 2017; Ouyang et al. 2022): per-token KL-penalised rewards, GAE(γ, λ) with the
    value model's ``V(x_<t)``, returns ``R_t = Â_t + V_t`` (value targets), advantages whitened over the
    batch's completion tokens when ``whiten_advantages`` (returns use the raw advantages)."""
    if s.values is None:
        raise ValueError("ppo needs values")
    rewards, metrics = _shaped_rewards(s, cfg, beta)                             # [N, L]
    adv, returns = gae(rewards, s.values, s.mask, gamma=cfg.gamma, lam=cfg.lam)  # [N, L] each
    metrics["advantages_raw_mean"] = float(masked_mean(adv, s.mask))
    if cfg.whiten_advantages:
        adv = whiten(adv, s.mask)                                                # [N, L]
    return Advantages(adv, returns, metrics)


def _sequence_rewards(s: Scored, cfg, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``score − β·Σ_t kl_t`` per completion ``[N]`` (KL in the reward), or the score (KL in the loss)."""
    rewards, metrics = _shaped_rewards(s, cfg, beta)                             # [N, L]
    return rewards.sum(-1), metrics                                              # [N]


def grpo_advantages_(s: Scored, cfg, beta: float) -> Advantages:
    """GRPO (Shao et al. 2024, §4.1.2): ``Â_i = (r_i − mean_g r) / std_g r`` broadcast over the tokens
    of completion ``i``. ``scale_rewards``: ``group`` (the paper), ``none`` (Dr. GRPO, Liu et al. 2025:
    no std scaling), ``batch`` (group-centred, scaled by the std of the whole batch's rewards)."""
    r, metrics = _sequence_rewards(s, cfg, beta)                                 # [N]
    G = s.group_size
    adv = grpo_advantages(r, G, scale_by_std=cfg.scale_rewards == "group")       # [N]
    if cfg.scale_rewards == "batch":
        adv = adv / (r.std() + 1e-6)                                             # [N]
    metrics["frac_zero_std_groups"] = float((r.view(-1, G).std(dim=1) == 0).float().mean())
    return Advantages(adv, None, metrics)


def rloo_advantages_(s: Scored, cfg, beta: float) -> Advantages:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): ``Â_i = R_i − mean_{j≠i} R_j`` with
    ``R = score − β·KL_seq`` (KL in the reward, as the paper)."""
    r, metrics = _sequence_rewards(s, cfg, beta)                                 # [N]
    return Advantages(rloo_advantages(r, s.group_size), None, metrics)           # [N]


def reinforce_advantages(s: Scored, cfg, beta: float) -> Advantages:
    """REINFORCE with a baseline (Williams 1992) on ``R = score − β·KL_seq``: ``Â = R − mean_batch R``, or
    with ``whiten_advantages`` the REINFORCE++-style (Hu 2025) batch whitening ``(R − μ) / σ``.
    Departure from REINFORCE++: the KL is summed into one sequence-level reward (no per-token returns)."""
    r, metrics = _sequence_rewards(s, cfg, beta)                                 # [N]
    adv = whiten(r) if cfg.whiten_advantages else reinforce_baseline(r, r.mean())  # [N]
    return Advantages(adv, None, metrics)


ADVANTAGE_ESTIMATORS: dict[str, Callable[[Scored, Any, float], Advantages]] = {
    "ppo": ppo_advantages,
    "grpo": grpo_advantages_,
    "rloo": rloo_advantages_,
    "reinforce": reinforce_advantages,
}


def select_groups(scores: torch.Tensor, group_size: int, keep: int) -> tuple[torch.Tensor, dict[str, float]]:
    """DAPO's dynamic sampling (Yu et al. 2025: the DAPO objective's constraint
    ``0 < |{o_i : o_i correct}| < G``, here for any reward: the group's scores are not all equal; verl's
    ``filter_groups``). A group whose ``G`` rewards are equal has zero
    group-relative advantage and adds no gradient, only tokens to the loss's normaliser; of the groups drawn
    (``scores`` ``[n·G]``, row ``i`` in group ``i // G``), the first ``keep`` with signal are kept in draw order.
    Departure from the paper, which samples again until the batch is full: the draw is made once (``oversample``
    × the prompts), and when fewer than ``keep`` groups have signal the first groups without it fill the rest, so
    every step has the same size. Returns the kept rows ``[keep·G]`` (whole groups, draw order) and metrics."""
    G = group_size
    if scores.numel() % G or scores.numel() < keep * G:
        raise ValueError(f"{scores.numel()} scores are not at least {keep} whole groups of {G}")
    by_group = scores.view(-1, G)                                                # [n, G]
    signal = by_group.amax(dim=1) > by_group.amin(dim=1)                         # [n]
    order = torch.cat([signal.nonzero().squeeze(1), (~signal).nonzero().squeeze(1)])  # [n] signal first
    groups = order[:keep].sort().values                                          # [keep] draw order
    rows = (groups[:, None] * G + torch.arange(G, device=scores.device)).flatten()  # [keep·G]
    n_signal = int(signal.sum())
    return rows, {"groups_with_signal_frac": n_signal / signal.numel(),
                  "groups_without_signal_kept": float(max(keep - n_signal, 0))}


# ------------------------------------------------------------------------------------- policy loss
_CLIP_FIELDS = ("clip_eps_low", "clip_eps_high", "dual_clip_c")


def policy_loss_spec(cfg) -> tuple[Callable, dict[str, Any]]:
    """``(loss_fn, kwargs)`` for ``cfg.policy_loss``: the registry function and the clip settings the
    config sets (``null`` keeps the loss's own default). One-line ConfigError when a setting does not
    apply to that loss or a required one is missing."""
    name = cfg.resolved_policy_loss
    fn = POLICY_LOSSES[name]
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    for key in _CLIP_FIELDS:
        value = getattr(cfg, key)
        if value is None:
            continue
        if key not in params:
            raise ConfigError(f"config: key '{key}' does not apply to policy_loss={cfg.policy_loss}")
        kwargs[key] = value
    for pname, p in params.items():
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and pname not in kwargs:
            raise ConfigError(f"config: policy_loss={cfg.policy_loss} needs key '{pname}'")
    return fn, kwargs


def shift_values(token_values: torch.Tensor) -> torch.Tensor:
    """``V(x_≤t)`` at position ``t`` (a token-classification head) → ``V(x_<t)`` at position ``t``: the
    value of the state in which token ``t`` is chosen, aligned like the log-probs. [B, T] → [B, T]."""
    return torch.cat([token_values.new_zeros(token_values.shape[0], 1), token_values[:, :-1]], dim=1)


class _Given:
    """A stand-in model that returns an already computed forward output (so the log-prob shift logic of
    ``sequence_logprobs`` is reused on the policy part of a policy+value forward)."""

    def __init__(self, out):
        self.out = out

    def __call__(self, **_):
        return self.out


def pack_groups(batch: dict, group_size: int, prompt_width: int,
                mask_dtype: torch.dtype = torch.float32) -> dict | None:
    """Prefix sharing for a micro-batch of whole groups: the ``G`` completions of a prompt in ONE row
    ``[prompt, y_1, …, y_G]`` so the prompt is computed once instead of ``G`` times (the layout of the
    DPO / reward-model ``share_prompt``; Wang et al. 2024, "Accelerating Direct Preference Optimization with
    Prefix Sharing"). ``batch``: the micro-batch's ``input_ids`` / ``attention_mask`` / ``position_ids``
    ``[b, T]`` (rows ``k·G … k·G+G−1`` are group ``k``; columns ``< prompt_width`` are the left-padded
    prompt, the rest the right-padded completions). Returns ``None`` when the rows are not whole groups
    sharing their prompt columns, else

    * ``input_ids`` / ``position_ids`` ``[g, L]`` with ``L = P + G·C`` (every completion keeps the positions
      it has in its own row);
    * ``attention_mask`` ``[g, 1, L, L]`` additive: a token sees the real prompt tokens and the earlier real
      tokens of its own completion, never another completion (padding sees only itself);
    * ``index`` ``[b, T]``: for every token of the unpacked layout, its flat position in the packed rows
      (``g·L``); the packed logits gathered there are the unpacked logits (same context, same positions)."""
    ids, am, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]  # [b, T]
    b, T = ids.shape
    G, P = int(group_size), int(prompt_width)
    C = T - P
    if G < 2 or b % G or not 0 < P < T:
        return None
    g = b // G
    ids_g, am_g, pos_g = ids.view(g, G, T), am.view(g, G, T), pos.view(g, G, T)   # [g, G, T]
    for x in (ids_g, am_g):
        if not torch.equal(x[:, :, :P], x[:, :1, :P].expand(-1, G, -1)):
            return None
    cat = lambda x: torch.cat([x[:, 0, :P], x[:, :, P:].reshape(g, G * C)], dim=1)  # noqa: E731  [g, L]
    p_ids, p_am, p_pos = cat(ids_g), cat(am_g).bool(), cat(pos_g)                # [g, L]
    L = P + G * C
    dev = ids.device
    block = torch.cat([torch.zeros(P, dtype=torch.long, device=dev),
                       torch.arange(1, G + 1, device=dev).repeat_interleave(C)])  # [L] 0 = prompt, j+1 = y_j
    seg = torch.where(p_am, block, -1)                                           # [g, L] -1 = padding
    mask = prefix_sharing_mask(seg, mask_dtype)                                  # [g, 1, L, L]
    col = torch.arange(T, device=dev)
    j = torch.arange(G, device=dev).view(G, 1)
    local = torch.where(col < P, col, P + j * C + (col - P))                      # [G, T]
    index = (torch.arange(g, device=dev).view(g, 1, 1) * L + local).reshape(b, T)  # [b, T]
    return {"input_ids": p_ids, "attention_mask": mask, "position_ids": p_pos, "index": index,
            "num_tokens": int(p_am.sum()), "prompt_width": P}


def _unpack(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Packed per-position outputs ``[g, L, ...]`` → the unpacked layout ``[b, T, ...]`` (``index`` from
    :func:`pack_groups`)."""
    flat = x.flatten(0, 1)                                                       # [g·L, ...]
    return flat.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[2:])


def _keep_kwargs(model, T: int, skip: int) -> dict:
    """``logits_to_keep`` for ``model`` when it takes it and positions ``< skip`` are not needed."""
    from posttrain.models.logprobs import takes_logits_to_keep

    return {"logits_to_keep": T - skip} if skip > 0 and takes_logits_to_keep(model) else {}


def forward_policy(model, batch: dict, *, temperature: float, with_entropy: bool = False,
                   ) -> dict[str, torch.Tensor]:
    """One forward of ``model`` (a causal LM, or :class:`~posttrain.stages.rl.PolicyWithValue` — possibly
    DDP-wrapped) over a micro-batch: ``logprobs`` ``[B, T]`` at ``temperature`` (+ ``entropy``), and
    ``values`` ``[B, T]`` = ``V(x_<t)`` when the model has a value head. The SAME code computes the old
    log-probs after sampling and the new ones in the loss, so on-policy ratios are exactly 1. A micro-batch
    with ``packed`` (:func:`pack_groups`) runs the packed rows and gathers the outputs back to ``[B, T]``."""
    from posttrain.models.logprobs import first_target, gathered_logprobs, sequence_logprobs

    packed = batch.get("packed")
    if packed is None:
        # the LM head only from the last prompt position on (model_logits); values need every position
        start = first_target(batch["completion_mask"])
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], use_cache=False,
                    **_keep_kwargs(model, batch["input_ids"].shape[1], start - 1))
        res = sequence_logprobs(_Given(out), batch["input_ids"], batch["attention_mask"],
                                position_ids=batch["position_ids"], temperature=temperature,
                                with_entropy=with_entropy, from_position=start)
        token_values = getattr(out, "token_values", None)
    else:  # log-probs straight from the packed logits: no [B, T, V] copy
        P, L = packed["prompt_width"], packed["input_ids"].shape[1]
        out = model(input_ids=packed["input_ids"], attention_mask=packed["attention_mask"],
                    position_ids=packed["position_ids"], use_cache=False, **_keep_kwargs(model, L, P - 1))
        logits = out.logits                                                      # [g, L or L−P+1, V]
        index = packed["index"]                                                  # [b, T] flat in [g·L]
        if logits.shape[1] != L:  # the head ran from column P − 1 on: re-address the kept columns
            index = (index // L) * logits.shape[1] + (index % L - (P - 1)).clamp(min=0)
        res = gathered_logprobs(logits.flatten(0, 1), index, batch["input_ids"], batch["attention_mask"],
                                temperature=temperature, with_entropy=with_entropy)
        res = {k: torch.cat([v.new_zeros(v.shape[0], P), v[:, P:]], dim=1) for k, v in res.items()}  # as padded
        tv = getattr(out, "token_values", None)
        token_values = None if tv is None else _unpack(tv, packed["index"])
    if token_values is not None:
        res["values"] = shift_values(token_values)                               # [B, T]
    return res


class RLObjective:
    """``loss_fn(model, batch, normaliser)`` for :meth:`posttrain.engine.Trainer.step`.

    ``loss = L_pg + [β·L_KL] + [vf_coef·L_V]``: the policy loss from the registry on
    (new log-probs, old log-probs, advantages), GRPO's KL loss term when ``kl_mode=loss`` and ``β > 0``,
    and PPO's clipped value loss when the model has a value head. All terms use the same mask, ``agg``
    mode and global ``normaliser`` (``batch["num_units"]`` summed by the engine), so micro-batching never
    changes the loss. ``beta`` is read from the KL controller at each call.
    """

    def __init__(self, cfg, kl_controller, *, constant_normaliser: float | None):
        self.cfg = cfg
        self.kl = kl_controller
        self.pg_fn, self.pg_kwargs = policy_loss_spec(cfg)
        self.agg = cfg.resolved_loss_agg
        self.constant_normaliser = constant_normaliser
        self.kl_in_loss = cfg.resolved_kl_mode == "loss"

    def __call__(self, model, batch, normaliser=None):
        cfg = self.cfg
        mask = batch["completion_mask"]                                          # [B, T]
        agg = dict(agg=self.agg, normaliser=normaliser, constant_normaliser=self.constant_normaliser)
        res = forward_policy(model, batch, temperature=cfg.generation.temperature, with_entropy=True)
        logprobs = res["logprobs"]                                               # [B, T]
        old = batch.get("old_logprobs")  # absent: one on-policy update, π_old = sg(π_θ) (ratio exactly 1)
        old = logprobs.detach() if old is None else old
        loss, metrics = self.pg_fn(logprobs, old, batch["advantages"], mask, **self.pg_kwargs, **agg)
        metrics = dict(metrics)
        beta = self.kl.value
        if self.kl_in_loss and beta > 0:
            kl_loss, km = kl_loss_term(logprobs, batch["ref_logprobs"], mask, beta=beta,
                                       estimator=cfg.resolved_kl_estimator, **agg)
            loss = loss + kl_loss
            metrics["kl_loss"] = km["kl_loss"]
        if "values" in res:
            v_loss, vm = clipped_value_loss(res["values"], batch["old_values"], batch["returns"], mask,
                                            clip_range=cfg.value_clip, **agg)
            loss = loss + cfg.vf_coef * v_loss
            metrics.update(vm)
        with torch.no_grad():
            metrics["entropy"] = masked_mean(res["entropy"].detach(), mask)
            metrics["kl_to_ref_k1"] = masked_mean(logprobs.detach() - batch["ref_logprobs"], mask)
        return loss, metrics
