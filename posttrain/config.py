"""Typed, validated configs: one class per stage, YAML + ``key=value`` overrides.

Every stage shares the common keys of :class:`StageConfig` (``model``, ``data.train``, ``data.eval``,
``output_dir``, ``seed``, ``max_steps`` and the training-engine knobs) and adds its own. A config is built by
:func:`load_config` from an optional YAML file and ``key=value`` / dotted overrides (``data.train=x.jsonl``),
validated by pydantic (unknown keys, wrong types and out-of-range values are rejected with one line naming
the key) and frozen: nothing mutates it at run time.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator,
                      model_validator)

from posttrain.errors import ConfigError


class Section(BaseModel):
    """Base for every config block: unknown keys are errors, NaN / inf are rejected as not finite (before any
    range check, so ``lr=nan`` is not reported as "should be less than or equal to 1"), values are frozen
    after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False,
                              protected_namespaces=())


# --------------------------------------------------------------------------------------- common blocks
class DataConfig(Section):
    train: str | None = Field(None, description="training data: .jsonl/.json/.parquet/.csv, a save_to_disk "
                                                "folder, or a hub id (online only)")
    eval: str | None = Field(None, description="evaluation data (same forms as data.train)")
    max_len: int = Field(256, ge=8, le=1_000_000, description="max tokens of prompt + completion")
    max_prompt_len: int = Field(128, ge=1, le=1_000_000,
                                description="max prompt tokens (longer prompts keep their end)")
    max_train_rows: int | None = Field(None, ge=1, description="use only the first N training rows")
    max_eval_rows: int | None = Field(None, ge=1, description="use only the first N evaluation rows")

    @model_validator(mode="after")
    def _prompt_fits(self) -> "DataConfig":
        if self.max_prompt_len >= self.max_len and "max_prompt_len" not in self.model_fields_set:
            # only max_len was given (e.g. pretraining rows of 64 tokens): the prompt budget follows it
            return self.model_copy(update={"max_prompt_len": max(1, self.max_len // 2)})
        if self.max_prompt_len >= self.max_len:
            raise ValueError("data.max_prompt_len must be smaller than data.max_len")
        return self


class GenerationConfig(Section):
    max_new_tokens: int = Field(48, ge=1, le=100_000, description="tokens to generate per completion")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens (0 = off)")
    stop_strings: list[str] = Field(default_factory=list, description="extra strings that end a completion")
    backend: Literal["auto", "native", "static", "hf"] = Field(
        "auto", description="sampler: auto (native for Llama/Qwen2/Mistral, else hf), native, static "
                            "(fixed-shape steps, CUDA graphs on a GPU) or hf")


class LoraConfig(Section):
    enabled: bool = Field(False, description="train LoRA adapters (PEFT) instead of all weights")
    r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      description="module names that get adapters")
    save: Literal["merged", "adapter"] = Field("merged", description="save merged weights or the adapter only")


class StageConfig(Section):
    """Keys every stage shares (same names everywhere)."""

    model: str = Field("preset:tiny", description="a model folder, a run directory, a hub id, or preset:NAME")
    tokenizer: str | None = Field(None, description="tokenizer folder or hub id (default: the model's)")
    data: DataConfig = Field(default_factory=DataConfig, description="datasets")
    output_dir: str = Field("runs/stage", description="run directory this stage writes")
    seed: int = Field(0, ge=0, description="seed for every RNG")
    max_steps: int = Field(100, ge=1, le=10_000_000, description="optimizer steps")
    # ---- training engine
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="peak learning rate (AdamW)")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="final lr as a fraction of lr")
    weight_decay: float = Field(0.0, ge=0.0, le=10.0, description="AdamW weight decay")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2")
    adam_eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="global-norm gradient clipping (null = off)")
    batch_size: int = Field(8, ge=1, description="examples per micro-batch per rank")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0 = only at the end)")
    eval_batches: int = Field(0, ge=0, description="cap on evaluation batches (0 = whole eval set)")
    log_every: int = Field(1, ge=1, description="write metrics every N steps")
    checkpoint_every: int = Field(0, ge=0, description="checkpoint every N steps (0 = only the final model)")
    keep_checkpoints: int = Field(2, ge=1, description="keep the last K checkpoints")
    resume: bool = Field(True, description="resume from the latest checkpoint in output_dir when there is one")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="weights dtype (auto: fp32 on "
                                                                                  "CPU, bf16 autocast on CUDA)")
    peak_flops: float | None = Field(None, gt=0, description="peak FLOP/s for the MFU estimate "
                                                             "(default: measured matmul peak)")
    tensorboard: bool = Field(False, description="also write TensorBoard event files")
    progress: bool = Field(True, description="show progress bars")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    compile: bool = Field(False, description="run the training forward/backward through torch.compile "
                                             "(fuses elementwise ops; the first steps pay the compile time, "
                                             "new shapes recompile; needs a C++ compiler on the CPU)")
    gradient_checkpointing: bool = Field(
        False, description="recompute each layer's activations in the backward pass (HF gradient checkpointing, "
                           "non-reentrant): activation memory of one layer instead of all, for ~1/3 more compute")


# --------------------------------------------------------------------------------------------- stages
class PretrainConfig(StageConfig):
    output_dir: str = Field("runs/pretrain", description="run directory this stage writes")
    packing: bool = Field(True, description="pack documents into rows of data.max_len tokens")


class SFTConfig(StageConfig):
    output_dir: str = Field("runs/sft", description="run directory this stage writes")
    completion_only_loss: bool = Field(True, description="loss on completion / assistant tokens only "
                                                         "(false: all tokens)")
    packing: bool = Field(False, description="pack short examples into rows without cross-attention")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters")
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(temperature=0.0),
                                         description="sample generations")
    sample_prompts: int = Field(4, ge=0, description="sample generations on N fixed eval prompts at the end")
    sample_every: int = Field(0, ge=0, description="also sample every N steps (0 = only at the end)")


class RewardModelConfig(StageConfig):
    """``posttrain reward-model``: a scalar reward model on preference pairs (Bradley–Terry, margin) or K-wise
    rankings (InstructGPT); ``batch_size`` counts pairs / rankings (prompts), each scored in one forward."""

    output_dir: str = Field("runs/reward_model", description="run directory this stage writes")
    loss: Literal["auto", "bradley_terry", "margin", "kwise", "plackett_luce"] = Field(
        "auto", description="auto: kwise for ranking data, margin when a 'margin' column exists, else "
                            "bradley_terry; plackett_luce: the likelihood of each whole ranking")
    centering_coef: float = Field(0.0, ge=0.0, description="reward-centring regulariser coefficient η: adds "
                                                          "η·(r_chosen + r_rejected)² per pair (Eisenstein et "
                                                          "al. 2023), pulling rewards towards 0")
    head_init: Literal["auto", "normal", "zero"] = Field(
        "auto", description="score head init: auto = keep the head of a reward-model `model`, else normal "
                            "(std 1/sqrt(d+1)); zero = all-zero initial rewards")
    gold_eval: Literal["auto", "on", "off"] = Field(
        "auto", description="also measure agreement with the toy world's gold preference on data.eval "
                            "(auto: when the eval prompts come from the toy world)")
    calibration_bins: int = Field(10, ge=1, le=1000, description="confidence bins of the expected calibration "
                                                                 "error")
    share_prompt: bool = Field(True, description="score a prompt's completions in one packed row that computes "
                                                 "the shared prompt once (block attention mask); false: one "
                                                 "padded row per completion")
    # defaults tuned on the toy world (a 2M-param SFT backbone: ~1 min on 2 CPU cores, one epoch of the 1600
    # annotator pairs); for billion-parameter models use lr ≈ 1e-5 (see the InstructGPT recipe's comments)
    batch_size: int = Field(16, ge=1, description="pairs / rankings (prompts) per micro-batch per rank")
    lr: float = Field(3e-4, gt=0.0, le=1.0, description="peak learning rate (AdamW)")
    warmup_steps: int = Field(10, ge=0, description="linear warmup steps")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="final lr as a fraction of lr")


class ScoreConfig(Section):
    """``posttrain score``: score prompt/completion, conversational, preference or ranking rows with a reward
    model into a jsonl file."""

    model: str = Field(..., description="reward model folder or run directory")
    data: DataConfig = Field(default_factory=DataConfig, description="rows to score (data.train)")
    output: str = Field("scores.jsonl", description="jsonl written with an added 'reward' column "
                                                    "(preference rows: reward_chosen, reward_rejected, "
                                                    "reward_margin; ranking rows: rewards)")
    tokenizer: str | None = Field(None, description="tokenizer folder (default: the reward model's)")
    batch_size: int = Field(16, ge=1, description="sequences per forward pass")
    device: str = Field("auto", description="auto, cpu, cuda or mps")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="weights dtype")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    progress: bool = Field(True, description="print a one-line summary")
    seed: int = Field(0, ge=0, description="seed")
    output_dir: str | None = Field(None, description="unused; accepted for symmetry")
    max_steps: int | None = Field(None, description="unused; accepted for symmetry")


class DPOConfig(StageConfig):
    """``posttrain dpo``: direct alignment on preference pairs (or unpaired KTO data) with any loss of
    ``posttrain.losses.PREFERENCE_LOSSES``; ``beta`` and the loss's own knobs below."""

    output_dir: str = Field("runs/dpo", description="run directory this stage writes")
    loss: str = Field("dpo", description="preference loss: a name in posttrain.losses.PREFERENCE_LOSSES "
                                         "(dpo, cdpo, robust_dpo, ipo, hinge, slic, simpo, orpo, apo_zero, "
                                         "apo_down, kto)")
    beta: float | None = Field(None, gt=0.0, le=100.0,
                               description="β (IPO's τ, ORPO's λ); null: the loss's default (dpo 0.1, ipo "
                                           "0.1, simpo 2.0, orpo 0.1, kto 0.1, ...)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="ε of cdpo / robust_dpo")
    simpo_gamma: float = Field(0.5, ge=0.0, description="SimPO target reward margin γ (absolute)")
    ipo_length_average: bool = Field(True, description="IPO: length-averaged log-ratios (false: sums, "
                                                       "as in the paper)")
    kto_desirable_weight: float = Field(1.0, gt=0.0, description="KTO λ_D (weight of desirable examples)")
    kto_undesirable_weight: float = Field(1.0, gt=0.0, description="KTO λ_U (weight of undesirable examples)")
    ranking_pairs: Literal["all", "best_rest", "best_worst"] = Field(
        "all", description="K-wise ranking data as pairs: all K(K-1)/2, the best vs each other, or best vs worst")
    nll_weight: float = Field(0.0, ge=0.0, le=100.0,
                              description="RPO α: add α × the chosen completions' per-token NLL to any paired "
                                          "loss (Pang et al. 2024; 0: off)")
    ref_model: str | None = Field(None, description="reference model (default: the initial policy)")
    precompute_ref: bool = Field(True, description="compute reference log-probs once and cache them in the "
                                                   "run dir (false: on the fly)")
    ref_batch_size: int = Field(32, ge=1, description="sequences per forward when precomputing reference "
                                                      "log-probs")
    share_prompt: bool | Literal["auto"] = Field(
        "auto", description="compute each pair's prompt once: one [B, P+C+R] forward with a 4-D mask instead "
                            "of [2B, P+C] (same log-probs, fewer tokens; auto: per batch, when the estimated "
                            "forward cost is lower; paired losses only)")
    sample_prompts: int = Field(4, ge=0, description="sample generations on N eval prompts at the end")
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(temperature=0.0),
                                         description="sample generations")
    lr: float = Field(5e-6, gt=0.0, le=1.0, description="peak learning rate (AdamW)")


class PreferenceDataConfig(Section):
    """``posttrain preference-data``: sample K completions per prompt, score them, write pairs (Tülu 3's
    on-policy preference data)."""

    model: str = Field(..., description="policy that samples completions (folder, run dir, preset:NAME)")
    tokenizer: str | None = Field(None, description="tokenizer folder (default: the model's)")
    data: DataConfig = Field(default_factory=DataConfig, description="prompts (data.train: any dataset with "
                                                                     "a 'prompt' column)")
    reward: str = Field("gold", description="reward source: rm:PATH, gold, verifier:math, callable:mod:fn")
    num_samples: int = Field(4, ge=2, le=64, description="completions per prompt (K)")
    pairs: Literal["best_worst", "all_above_gap"] = Field("best_worst", description="best vs worst per "
                                                          "prompt, or every pair whose gap exceeds min_gap")
    min_gap: float = Field(0.0, ge=0.0, description="a pair needs score gap > min_gap (ties are dropped)")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="sampling")
    output_dir: str = Field("runs/preference_data", description="run directory (writes pairs.jsonl)")
    batch_size: int = Field(16, ge=1, description="prompts per generation batch")
    reward_batch_size: int = Field(32, ge=1, description="completions per reward-model forward")
    seed: int = Field(0, ge=0, description="seed")
    device: str = Field("auto", description="auto, cpu, cuda or mps")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="weights dtype")
    resume: bool = Field(True, description="reuse a finished run with the same config")
    progress: bool = Field(True, description="show progress bars")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    max_steps: int | None = Field(None, description="unused; accepted for symmetry")


class RLConfig(StageConfig):
    """``posttrain rl``: KL-regularised RL with policy gradients (one response, one reward per prompt).

    One **step** = one rollout (``prompts_per_step`` prompts × ``group_size`` completions), scored, followed by
    ``ppo_epochs`` passes over it in minibatches of ``minibatch_size`` completions; every minibatch is one
    optimizer step, made of micro-batches of ``batch_size`` completions (gradient accumulation). ``max_steps``
    counts rollout steps; the learning-rate schedule runs over the optimizer steps.
    """

    output_dir: str = Field("runs/rl", description="run directory this stage writes")
    algo: Literal["ppo", "reinforce", "rloo", "grpo"] = Field("grpo", description="policy-gradient algorithm")
    reward: str = Field("gold", description="reward source(s): rm:PATH, gold, verifier:math, "
                                            "callable:mod:fn, or 'a*0.5+b*1.0' weighted sums")
    policy_loss: str = Field(
        "auto", description="a name in posttrain.losses.POLICY_LOSSES (vanilla_pg, ppo, gspo, cispo; aliases "
                            "vanilla, ppo_clip); auto: ppo for ppo/grpo, vanilla_pg for reinforce/rloo")
    group_size: int = Field(4, ge=1, le=256, description="completions per prompt (G)")
    prompts_per_step: int = Field(8, ge=1, description="prompts sampled per rollout step")
    ppo_epochs: int = Field(1, ge=1, le=64, description="passes over each rollout batch")
    minibatch_size: int | None = Field(None, ge=1, description="completions per optimizer step (default: the "
                                                               "whole rollout, prompts_per_step × group_size)")
    batch_size: int = Field(8, ge=1, description="completions per micro-batch (forward/backward)")
    clip_eps_low: float | None = Field(None, gt=0.0, lt=1.0, description="clip ε (lower); null = the policy "
                                       "loss's default (ppo 0.2, gspo 3e-4, cispo none)")
    clip_eps_high: float | None = Field(None, gt=0.0, description="clip ε (upper; DAPO clip-higher); null = the "
                                        "loss's default (ppo = low, gspo 4e-4; cispo requires it)")
    dual_clip_c: float | None = Field(None, gt=1.0, description="dual-clip constant c (null = off)")
    beta: float = Field(0.05, ge=0.0, le=100.0, description="KL coefficient β (initial, when adaptive)")
    kl_mode: Literal["auto", "reward", "loss"] = Field(
        "auto", description="KL as a per-token reward penalty (InstructGPT) or a loss term (GRPO); auto: loss "
                            "for grpo, reward otherwise")
    kl_estimator: Literal["auto", "k1", "k2", "k3"] = Field(
        "auto", description="KL estimator; auto: k3 for kl_mode=loss, k1 for kl_mode=reward")
    kl_target: float | None = Field(None, gt=0.0, description="adaptive KL target per sequence (null = fixed β)")
    kl_horizon: int = Field(10_000, ge=1, description="adaptive KL horizon (in completions)")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="discount γ (GAE)")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="GAE λ")
    vf_coef: float = Field(0.1, ge=0.0, description="value loss coefficient")
    value_clip: float = Field(0.2, gt=0.0, description="value clipping range")
    value_model: str | None = Field(None, description="value model init (default: the reward model when "
                                                      "reward=rm:PATH, else the policy)")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="advantage std scaling "
                                                                                  "(none = Dr. GRPO)")
    whiten_advantages: bool = Field(True, description="whiten advantages over the batch (ppo; reinforce: "
                                                      "REINFORCE++-style whitening instead of a mean baseline)")
    loss_agg: Literal["auto", "token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                      "seq-mean-token-sum-norm"] = Field(
        "auto", description="how per-token losses are aggregated (posttrain.losses.reduce); auto: "
                            "seq-mean-token-mean for gspo, token-mean otherwise; seq-mean-token-sum-norm "
                            "divides by generation.max_new_tokens (Dr. GRPO)")
    missing_eos_penalty: float | None = Field(None, description="reward added when a completion hits the "
                                                                "length limit without EOS")
    dynamic_sampling: bool = Field(
        False, description="DAPO's dynamic sampling (Yu et al. 2025): draw oversample × prompts_per_step prompts, "
                           "keep prompts_per_step groups whose rewards are not all equal (zero advantage, no "
                           "gradient); groups without signal fill any shortfall")
    oversample: float = Field(2.0, ge=1.0, le=16.0, description="prompts drawn per kept prompt with "
                                                                 "dynamic_sampling")
    ref_model: str | None = Field(None, description="reference model (default: the initial policy)")
    recompute_logprobs: bool | None = Field(
        None, description="recompute the sampling policy's log-probs with a forward pass after sampling (null: "
                          "only when a rollout feeds more than one update; with one on-policy update the loss's "
                          "own forward is the sampling policy, π_old = sg(π_θ) exactly, and KL-in-reward uses the "
                          "sampler's log-probs)")
    share_prompt: bool | Literal["auto"] = Field(
        "auto", description="compute each prompt once for its group: the G completions in one packed row "
                            "[prompt, y_1..y_G] under a block mask (same log-probs, fewer tokens; auto: when the "
                            "estimated forward cost is lower, G > 1 and there is no value model)")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="rollout sampling")
    sample_every: int = Field(10, ge=0, description="log sample completions every N steps (0 = off)")
    gold_metric: bool | None = Field(
        None, description="log the toy world's gold reward of each batch (null: when the prompts are toy-world "
                          "prompts); never used for training unless reward=gold")
    lr: float = Field(1e-5, gt=0.0, le=1.0, description="peak learning rate (AdamW)")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("constant", description="decay after warmup")

    @field_validator("policy_loss")
    @classmethod
    def _known_policy_loss(cls, v: str) -> str:
        from posttrain.losses.policy import POLICY_LOSSES

        if v != "auto" and _POLICY_LOSS_ALIASES.get(v, v) not in POLICY_LOSSES:
            names = ", ".join(["auto", *POLICY_LOSSES, *_POLICY_LOSS_ALIASES])
            raise ValueError(f"unknown policy loss {v!r}; expected one of {names}")
        return v

    @model_validator(mode="after")
    def _rl_shapes(self) -> "RLConfig":
        if self.generation.temperature <= 0:
            raise ValueError("generation.temperature must be > 0 for RL (sampling, not greedy decoding)")
        n = self.prompts_per_step * self.group_size
        mb = n if self.minibatch_size is None else self.minibatch_size
        if n % mb:
            raise ValueError(f"prompts_per_step × group_size ({n}) must be a multiple of minibatch_size ({mb})")
        if mb % min(self.batch_size, mb):
            raise ValueError(f"minibatch_size ({mb}) must be a multiple of batch_size ({self.batch_size})")
        if self.algo in ("rloo", "grpo") and self.group_size < 2:
            raise ValueError(f"algo={self.algo} needs group_size >= 2 (it compares completions of a prompt)")
        if self.grad_accum != 1:
            raise ValueError("grad_accum is not used by rl: set minibatch_size (completions per optimizer "
                             "step) and batch_size (completions per micro-batch)")
        if self.resolved_kl_mode == "loss" and self.resolved_kl_estimator == "k1":
            raise ValueError("kl_estimator=k1 as a loss term (kl_mode=loss) has zero expected gradient "
                             "(E[∇ log π/π_ref] = 0 under π): use k2 or k3, or kl_mode=reward")
        if self.dynamic_sampling and self.group_size < 2:
            raise ValueError("dynamic_sampling keeps groups whose rewards differ: it needs group_size >= 2")
        if self.resolved_policy_loss == "vanilla_pg" and self.updates_per_step > 1:
            raise ValueError(f"policy_loss=vanilla_pg has no importance ratio, so only the first of the "
                             f"{self.updates_per_step} updates per rollout (ppo_epochs × rollout / minibatch_size) "
                             f"would be on-policy: use policy_loss=ppo (or cispo) or one update per rollout")
        return self

    @property
    def rollout_size(self) -> int:
        """Completions per step (``prompts_per_step × group_size``)."""
        return self.prompts_per_step * self.group_size

    @property
    def prompts_drawn(self) -> int:
        """Prompts sampled per step and rank: ``prompts_per_step``, or ``⌈oversample · prompts_per_step⌉``
        with ``dynamic_sampling``."""
        return math.ceil(self.oversample * self.prompts_per_step) if self.dynamic_sampling else self.prompts_per_step

    @property
    def resolved_minibatch_size(self) -> int:
        return self.rollout_size if self.minibatch_size is None else self.minibatch_size

    @property
    def micro_batch_size(self) -> int:
        return min(self.batch_size, self.resolved_minibatch_size)

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps per rollout step (``ppo_epochs × rollout_size / minibatch_size``)."""
        return self.ppo_epochs * (self.rollout_size // self.resolved_minibatch_size)

    @property
    def resolved_recompute_logprobs(self) -> bool:
        return self.updates_per_step > 1 if self.recompute_logprobs is None else self.recompute_logprobs

    @property
    def resolved_kl_mode(self) -> str:
        return ("loss" if self.algo == "grpo" else "reward") if self.kl_mode == "auto" else self.kl_mode

    @property
    def resolved_kl_estimator(self) -> str:
        if self.kl_estimator != "auto":
            return self.kl_estimator
        return "k3" if self.resolved_kl_mode == "loss" else "k1"

    @property
    def resolved_policy_loss(self) -> str:
        """The ``POLICY_LOSSES`` key."""
        if self.policy_loss != "auto":
            return _POLICY_LOSS_ALIASES.get(self.policy_loss, self.policy_loss)
        return "ppo" if self.algo in ("ppo", "grpo") else "vanilla_pg"

    @property
    def resolved_loss_agg(self) -> str:
        if self.loss_agg != "auto":
            return self.loss_agg
        return "seq-mean-token-mean" if self.resolved_policy_loss == "gspo" else "token-mean"


_POLICY_LOSS_ALIASES = {"vanilla": "vanilla_pg", "ppo_clip": "ppo", "reinforce": "vanilla_pg"}


def _sft_only_fields() -> dict[str, Any]:
    """The keys of :class:`SFTConfig` that are not :class:`StageConfig` keys (packing, lora, ...)."""
    return {k: (f.annotation, f) for k, f in SFTConfig.model_fields.items() if k not in StageConfig.model_fields}


SFTOptions = create_model(
    "SFTOptions", __base__=Section, __module__=__name__,
    __doc__="The SFT-only keys of :class:`SFTConfig` (built from it, so the two never drift apart); the "
            "training-engine keys (lr, max_steps, batch_size, ...) come from the enclosing stage's config.",
    **_sft_only_fields())


class RejectionSamplingConfig(StageConfig):
    """``posttrain rejection-sampling``: ``num_samples`` completions per prompt of ``data.train`` from
    ``model``, scored by ``reward``, selected by ``select``, written as ``RUN/selected.jsonl``, then SFT on the
    selection into ``RUN/sft`` (``train=false``: only the dataset).

    The SFT is an ordinary ``posttrain sft`` run whose config is derived from this one: ``model``, every
    training-engine key (``lr``, ``max_steps``, ``batch_size``, ``grad_accum``, ``seed``, ...), ``data.max_len``,
    ``data.max_prompt_len`` and ``data.eval`` (optional SFT eval data) are this config's; ``data.train`` is the
    selection; ``output_dir`` is ``RUN/sft``; the SFT-only keys (``packing``, ``lora``, ...) are under ``sft``.
    """

    output_dir: str = Field("runs/rejection_sampling", description="run directory this stage writes")
    reward: str = Field("gold", description="reward source: rm:PATH, gold, verifier:math, callable:mod:fn, or "
                                            "weighted sums like 'rm:PATH*1.0+verifier:math*0.5'")
    num_samples: int = Field(8, ge=1, le=1024, description="completions per prompt (N)")
    select: Literal["top1", "topk", "threshold"] = Field(
        "top1", description="top1: the best completion of every prompt; topk: the top_k best samples overall; "
                            "threshold: every sample scoring >= threshold")
    top_k: int = Field(100, ge=1, description="samples kept overall for select=topk")
    threshold: float | None = Field(None, description="minimum score for select=threshold")
    require_finished: bool = Field(True, description="only samples that stopped (EOS / stop string) before "
                                                     "generation.max_new_tokens can be selected")
    dedupe: bool = Field(True, description="a prompt's identical completions count once when selecting")
    train: bool = Field(True, description="run SFT on the selection (false: only write the dataset)")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="sampling")
    sample_batch_size: int = Field(16, ge=1, description="prompts per generation batch")
    reward_batch_size: int = Field(32, ge=1, description="completions per reward-model forward")
    gold_metric: Literal["auto", "on", "off"] = Field(
        "auto", description="also report the toy world's gold reward of all vs selected samples (auto: when "
                            "every prompt is a toy-world prompt); never used for selection unless reward=gold")
    sft: SFTOptions = Field(default_factory=SFTOptions, description="SFT-only settings for the training on the "
                                                                    "selection (packing, lora, ...)")

    @model_validator(mode="after")
    def _selection_rule(self) -> "RejectionSamplingConfig":
        if self.select == "threshold" and self.threshold is None:
            raise ValueError("select=threshold needs a threshold (e.g. threshold=0.5)")
        if self.num_samples > 1 and self.generation.temperature <= 0:
            raise ValueError("generation.temperature must be > 0 to draw num_samples > 1 different "
                             "completions (0 is greedy decoding)")
        return self


class BestOfNConfig(Section):
    """``posttrain best-of-n``: the proxy and gold reward of best-of-n sampling for n = 1, 2, 4, ..., max_n,
    estimated without bias from ``num_samples`` completions per prompt, against the analytic KL of
    best-of-n, ``log n − (n − 1)/n``. Writes ``RUN/table.json`` and ``RUN/scored.jsonl``."""

    model: str = Field(..., description="policy that samples completions (folder, run dir, preset:NAME)")
    tokenizer: str | None = Field(None, description="tokenizer folder (default: the model's)")
    data: DataConfig = Field(default_factory=DataConfig, description="prompts: data.eval when given, else "
                                                                     "data.train (any dataset with a prompt)")
    reward: str = Field(..., description="proxy reward source that chooses the best of n (e.g. "
                                         "rm:runs/reward_model)")
    gold: str = Field("gold", description="true reward source, reported for the chosen completion")
    max_n: int = Field(16, ge=1, le=1024, description="largest n (powers of two up to it, and max_n itself)")
    num_samples: int | None = Field(None, ge=1, le=4096, description="completions per prompt N >= max_n "
                                                                     "(default: max_n)")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="sampling")
    output_dir: str = Field("runs/best_of_n", description="run directory (writes table.json)")
    batch_size: int = Field(16, ge=1, description="prompts per generation batch")
    reward_batch_size: int = Field(32, ge=1, description="completions per reward-model forward")
    seed: int = Field(0, ge=0, description="seed")
    device: str = Field("auto", description="auto, cpu, cuda or mps")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="weights dtype")
    resume: bool = Field(True, description="reuse a finished run with the same config")
    progress: bool = Field(True, description="show progress and print the table")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    max_steps: int | None = Field(None, description="unused; accepted for symmetry")

    @model_validator(mode="after")
    def _samples(self) -> "BestOfNConfig":
        if self.num_samples is not None and self.num_samples < self.max_n:
            raise ValueError(f"num_samples ({self.num_samples}) must be >= max_n ({self.max_n})")
        if self.generation.temperature <= 0:
            raise ValueError("generation.temperature must be > 0 for best-of-n (sampling, not greedy decoding)")
        return self

    @property
    def samples_per_prompt(self) -> int:
        """N, the completions drawn per prompt."""
        return self.num_samples if self.num_samples is not None else self.max_n

    @property
    def ns(self) -> list[int]:
        """The n of the table: 1, 2, 4, ... up to max_n, and max_n itself."""
        out, n = [], 1
        while n < self.max_n:
            out.append(n)
            n *= 2
        return out + [self.max_n]


# ------------------------------------------------------------------------------------------ loading
def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _all_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, f in cls.model_fields.items():
        keys.append(prefix + name)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_all_keys(ann, prefix + name + "."))
    return keys


def format_validation_error(err: ValidationError, cls: type[BaseModel], source: str = "config") -> str:
    """One line naming the key for the first problem pydantic found."""
    e = err.errors()[0]
    key = _format_loc(e["loc"]) or "(root)"
    if e["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(key, _all_keys(cls), n=1)
        return f"{source}: unknown key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
    if e["type"] == "missing":
        return f"{source}: key '{key}' is required"
    got = e.get("input")
    msg = e["msg"]
    if (e["type"] in ("finite_number", "int_parsing", "float_parsing") and isinstance(got, str)
            and isinstance(_as_float(got), float) and not math.isfinite(_as_float(got))):
        # an override "nan" / "inf" reads as the number it is, like the YAML file's .nan / .inf
        got, msg = _as_float(got), "Input should be a finite number"
    got_s = repr(got) if not isinstance(got, dict) else "a mapping"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if key == "(root)" or (e["type"] == "value_error" and isinstance(got, dict)):
        return f"{source}: {msg}"
    return f"{source}: key '{key}': {msg[0].lower() + msg[1:]} (got {got_s})"


def _as_float(s: str) -> float | str:
    try:
        return float(s)
    except ValueError:
        return s


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{p}'")
            node = nxt
        node[parts[-1]] = value
    return out


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return any(c in s.lower() for c in "e.") and s.strip().lower() not in {"nan", "inf", "-inf", "+inf"}


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    return data


def build_config(cls: type[BaseModel], values: dict, source: str = "config") -> BaseModel:
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, cls, source)) from None


def load_config(cls: type[BaseModel], config_path: str | None = None, overrides: list[str] | None = None,
                defaults: dict | None = None) -> BaseModel:
    """Defaults (e.g. a recipe's) < YAML file < ``key=value`` overrides; validated and frozen."""
    values: dict = dict(defaults or {})
    source = "config"
    if config_path:
        values = deep_merge(values, read_yaml(config_path))
        source = str(config_path)
    if overrides:
        values = deep_merge(values, parse_overrides(overrides))
        source = "config" if not config_path else source
    return build_config(cls, values, source)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every field, nested blocks flattened with dotted keys."""
    rows = []
    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, prefix + name + "."))
            continue
        tname = _type_name(ann)
        if f.is_required():
            default = "(required)"
        else:
            d = f.get_default(call_default_factory=True)
            default = "null" if d is None else repr(d) if isinstance(d, str) else str(d)
        rows.append((prefix + name, tname, default, f.description or ""))
    return rows


def _type_name(ann: Any) -> str:
    s = str(ann)
    if isinstance(ann, type):
        return ann.__name__
    s = s.replace("typing.", "").replace("NoneType", "None")
    return s
