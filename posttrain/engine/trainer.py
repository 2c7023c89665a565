"""The one training loop every stage trains through.

:class:`Trainer` owns the optimizer (AdamW, :mod:`.optim`), the learning-rate schedule (:mod:`.schedule`),
DDP wrapping, precision, gradient accumulation, clipping, divergence checks, checkpoints and resume,
metrics and progress. Stages supply the data order (:class:`.batches.StepSampler`), a ``make_batch``
that turns example indices into tensors, and a ``loss_fn``::

    loss_fn(model, batch, normaliser) -> (loss: Tensor[], metrics: dict[str, Tensor])

Two entry points:

* :meth:`Trainer.fit` — the supervised loop (SFT, pretraining, reward models, DPO): for each step, ask the
  sampler for this rank's micro-batches, build them, :meth:`step`, log, evaluate, checkpoint.
* :meth:`Trainer.step` — one optimizer step over a list of micro-batches (RL calls it several times per
  rollout batch).

Global normalisation
--------------------
Each micro-batch may carry ``batch["num_units"]`` — the count its loss is normalised by
(:func:`posttrain.losses.reduce.num_units`: loss tokens for a token mean, sequences for a sequence mean).
The engine sums the counts over the step's micro-batches and all-reduces them over ranks into one
``normaliser`` (a Python float) that it passes to every ``loss_fn`` call. Each micro-batch loss is then
``Σ_local / normaliser``, so the sum of all micro-batch losses over accumulation steps and ranks is
exactly the loss of the whole global batch, however it is split (the reduction itself lives in
``losses/reduce.py``). DDP *averages* gradients over the ``W`` ranks, so the engine backpropagates
``W · loss`` to turn that average back into the sum. Without ``num_units`` the micro-batch losses are
taken as means and averaged (``loss / M`` per micro-batch, DDP averaging over ranks).
``no_sync`` skips the gradient all-reduce on all but the last micro-batch.

Metrics a ``loss_fn`` returns are combined the same way: keys named ``*_sum`` or ``num_*`` are summed over
micro-batches and ranks; every other key is a per-micro-batch mean and is averaged with weights
``num_units / normaliser`` (uniform without ``num_units``).

Precision: fp32 weights; on CUDA with ``dtype=auto`` forward passes run under bf16 autocast; other
``dtype`` values run in the weights' own dtype.

``gradient_checkpointing=true``: every Hugging Face model in ``model`` recomputes its layers' activations in
the backward pass (:func:`enable_gradient_checkpointing`); the gradients are the same numbers.

``compile=true``: the ``loss_fn`` receives ``torch.compile(model)`` (a wrapper over the same parameters, so
the optimizer, checkpoints and saved weights are unchanged); evaluation and anything else a stage runs use
the plain module. The first step pays the compile time and each new batch shape may recompile.

MFU: ``6 · N · tokens/s / peak`` per device (the forward + backward matmul FLOPs of a dense transformer,
ignoring attention's ``T²`` term), with ``N`` the parameters that take part in matmuls (all parameters
minus the input embedding table, unless it is tied to the output head). ``peak`` is ``cfg.peak_flops`` or
a measured dense-matmul rate (fp32 on CPU, bf16 on CUDA; 1–2 s, measured once per process and cached).
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from posttrain.errors import ConfigError, TrainingDiverged
from posttrain.io import atomic_dir

from . import distributed
from .optim import optimizer_from_config, trainable_named_parameters
from .run import Run
from .schedule import from_config as schedule_from_config

LossFn = Callable[[nn.Module, dict, "float | None"], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]

__all__ = ["Trainer", "seed_everything", "rng_state", "set_rng_state", "measure_peak_flops", "matmul_params",
           "to_device", "batch_tokens"]


# ------------------------------------------------------------------------------------------ RNG
def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy (when installed), torch (CPU) and every CUDA device."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ throughput
_PEAK_CACHE: dict[tuple, float] = {}


def measure_peak_flops(device: torch.device, dtype: torch.dtype | None = None) -> float:
    """A dense-matmul FLOP/s estimate for ``device`` (cached per process).

    CPU: fp32 1024×1024 matmuls with torch's current thread count; CUDA: bf16 8192×8192 (or ``dtype``)."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    key = (device.type, device.index, dtype, torch.get_num_threads())
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype, generator=None)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    reps, elapsed = 0, 0.0
    t0 = time.perf_counter()
    while elapsed < (0.5 if device.type == "cuda" else 0.3):
        for _ in range(4):
            a @ b
        sync()
        reps += 4
        elapsed = time.perf_counter() - t0
    _PEAK_CACHE[key] = 2.0 * n**3 * reps / elapsed
    return _PEAK_CACHE[key]


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in matmuls: all of them minus an untied input embedding table."""
    n = sum(p.numel() for p in model.parameters())
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    try:
        emb = get_in() if get_in else None
        out = get_out() if get_out else None
    except (AttributeError, NotImplementedError):
        emb = out = None
    w_in = getattr(emb, "weight", None)
    if w_in is not None and not (out is not None and getattr(out, "weight", None) is w_in):
        n -= w_in.numel()
    return n


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn on Hugging Face activation checkpointing (non-reentrant, so frozen inputs and LoRA need no
    ``enable_input_require_grads``) in every HF model inside ``model`` (a policy, a policy + value pair, a
    reward model's backbone, a PEFT wrapper's base). Returns how many; a ConfigError when none supports it."""
    from transformers import PreTrainedModel

    def on(m) -> bool:  # transformers 5 renamed the API (activation_*); older releases have gradient_*
        name = "is_activation_checkpointing" if hasattr(type(m), "is_activation_checkpointing") else \
            "is_gradient_checkpointing"
        return bool(getattr(m, name, False))

    n = 0
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing and not on(m):
            if hasattr(m, "activation_checkpointing_enable"):
                m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            n += 1
    if not n and not any(on(m) for m in model.modules() if isinstance(m, PreTrainedModel)):
        raise ConfigError("gradient_checkpointing=true, but the model has no Hugging Face module that supports it")
    return n


def to_device(batch: Mapping, device: torch.device) -> dict:
    """Tensors of ``batch`` moved to ``device`` (others passed through)."""
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def batch_tokens(batch: Mapping) -> tuple[int, int]:
    """(tokens, examples) a batch processes: ``num_tokens``/``num_examples`` when given, else counted
    from a 2-D ``attention_mask`` (or ``input_ids``)."""
    ids = batch.get("input_ids")
    if "num_tokens" in batch:
        tokens = int(batch["num_tokens"])
    else:
        am = batch.get("attention_mask")
        if isinstance(am, torch.Tensor) and am.dim() == 2:
            tokens = int(am.sum())
        elif isinstance(ids, torch.Tensor):
            tokens = ids.numel()
        else:
            tokens = 0
    if "num_examples" in batch:
        examples = int(batch["num_examples"])
    else:
        examples = int(ids.shape[0]) if isinstance(ids, torch.Tensor) else 0
    return tokens, examples


def _is_sum_metric(key: str) -> bool:
    base = key.rsplit("/", 1)[-1]
    return base.endswith("_sum") or base.startswith("num_")


def _stateful_get(obj: Any) -> Any:
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if isinstance(obj, dict):
        return dict(obj)
    raise TypeError(f"extra_state value of type {type(obj).__name__} has no state_dict()")


def _stateful_set(obj: Any, state: Any) -> None:
    if hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    elif isinstance(obj, torch.Generator):
        obj.set_state(state)
    elif isinstance(obj, dict):
        obj.clear()
        obj.update(state)
    else:
        raise TypeError(f"extra_state value of type {type(obj).__name__} has no load_state_dict()")


# --------------------------------------------------------------------------------------- trainer
class Trainer:
    """Optimizer, schedule, DDP, precision, accumulation, clipping, checkpoints, metrics.

    Args:
        cfg: a :class:`posttrain.config.StageConfig` (any stage's config).
        run: the :class:`.run.Run` to write metrics and checkpoints into.
        model: the model to train (trainable = ``requires_grad`` parameters), already on its device.
        total_steps: optimizer steps of the whole run (default ``cfg.max_steps``); sets the schedule.
        extra_state: ``{name: obj}`` saved with every checkpoint and restored on resume; ``obj`` has
            ``state_dict()``/``load_state_dict()``, or is a ``torch.Generator`` or a plain ``dict``.
        find_unused_parameters: passed to DDP.

    On construction it seeds every RNG with ``cfg.seed + rank`` and, when ``cfg.resume`` and the run has a
    checkpoint, restores it (``self.resumed_from`` is the restored step, else None); ``self.step_count``
    is the number of optimizer steps done.
    """

    def __init__(self, cfg, run: Run, model: nn.Module, *, total_steps: int | None = None,
                 extra_state: dict[str, Any] | None = None, find_unused_parameters: bool = False):
        self.cfg, self.run = cfg, run
        self.dist = distributed.current()
        self.total_steps = int(total_steps if total_steps is not None else cfg.max_steps)
        if getattr(cfg, "num_threads", None):
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed + self.dist.rank)
        self.module = model
        if getattr(cfg, "gradient_checkpointing", False):
            enable_gradient_checkpointing(model)
        self.device = next(model.parameters()).device
        self.autocast_dtype = (torch.bfloat16 if self.device.type == "cuda" and cfg.dtype == "auto"
                               and torch.cuda.is_bf16_supported() else None)
        self.named_params = trainable_named_parameters(model)
        self.params = [p for _, p in self.named_params]
        self.optimizer = optimizer_from_config(model, cfg, self.device)
        self.schedule = schedule_from_config(cfg, self.total_steps)
        self.extra_state = dict(extra_state or {})
        self.step_count = 0
        self.last_metrics: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self._n_matmul = matmul_params(model)
        self._peak: float | None = cfg.peak_flops
        self._tb = None
        self._t_train = 0.0
        self._tokens_total = 0
        self.resumed_from = self._maybe_resume()
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index if self.device.index is not None else self.dist.local_rank] \
                if self.device.type == "cuda" else None
            self.model: nn.Module = DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
        else:
            self.model = model
        # what the loss runs (``compile``: a torch.compile wrapper sharing the parameters; evaluation, sampling
        # and checkpoints keep using the plain module)
        self.train_model = torch.compile(self.model) if getattr(cfg, "compile", False) else self.model

    # ------------------------------------------------------------------------------------ helpers
    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def peak_flops(self) -> float:
        if self._peak is None:
            self._peak = measure_peak_flops(self.device, self.autocast_dtype)
        return self._peak

    # ---------------------------------------------------------------------------------------- step
    def step(self, microbatches: Sequence[Mapping], loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step over this rank's ``microbatches``; returns the step's metrics (floats).

        Raises :class:`posttrain.errors.TrainingDiverged` (before updating any weight) when the loss or the
        gradient norm is not finite."""
        if not microbatches:
            raise ValueError("step() needs at least one micro-batch")
        t0 = time.perf_counter()
        if not self.module.training:  # Module.train() walks every submodule: ~1 ms a step on small models
            self.model.train()
        mbs = [to_device(mb, self.device) for mb in microbatches]
        M, W = len(mbs), self.world_size
        has_units = all("num_units" in mb for mb in mbs)
        if has_units:
            units = [float(mb["num_units"]) for mb in mbs]
            total = torch.tensor([sum(units)], dtype=torch.float64, device=self.device)
            normaliser: float | None = float(distributed.all_reduce_sum(total).item())
            if normaliser <= 0:
                normaliser = 1.0  # nothing to learn from in this step: every loss is 0
            weights = [u / normaliser for u in units]
            scale = float(W)
        else:
            normaliser = None
            weights = [1.0 / (M * W)] * M
            scale = 1.0 / M
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        msums: dict[str, torch.Tensor] = {}
        tokens = examples = 0
        for i, mb in enumerate(mbs):
            sync_ctx = (self.model.no_sync() if (self.dist.enabled and i < M - 1 and hasattr(self.model, "no_sync"))
                        else contextlib.nullcontext())
            with sync_ctx:
                with self.autocast():
                    loss, metrics = loss_fn(self.train_model, mb, normaliser)
                (loss * scale).backward()
            loss_acc += loss.detach().double() * (1.0 if has_units else 1.0 / (M * W))
            for k, v in metrics.items():
                v = torch.as_tensor(v).detach().double().to(self.device)
                w = 1.0 if _is_sum_metric(k) else weights[i]
                msums[k] = msums.get(k, 0.0) + v * w
            t, e = batch_tokens(mb)
            tokens += t
            examples += e
        keys = sorted(msums)
        packed = torch.stack([loss_acc, torch.tensor(float(tokens), dtype=torch.float64, device=self.device),
                              torch.tensor(float(examples), dtype=torch.float64, device=self.device),
                              *[msums[k].reshape(()) for k in keys]])
        packed = distributed.all_reduce_sum(packed).tolist()
        loss_val, g_tokens, g_examples = packed[0], int(packed[1]), int(packed[2])

        if self.cfg.max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm, foreach=True)
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())
        gn = float(grad_norm)
        step_no = self.step_count + 1
        if not math.isfinite(loss_val) or not math.isfinite(gn):
            self.optimizer.zero_grad(set_to_none=True)
            what = "loss" if not math.isfinite(loss_val) else "gradient norm"
            bad = loss_val if not math.isfinite(loss_val) else gn
            ckpt = self.run.latest_checkpoint()
            where = (f"last good checkpoint kept at {ckpt}" if ckpt is not None
                     else "no checkpoint was written yet (set checkpoint_every to keep one)")
            raise TrainingDiverged(f"step {step_no}: {what} is {bad}; {where}")

        lr = self.schedule(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count = step_no
        dt = time.perf_counter() - t0
        self._t_train += dt
        self._tokens_total += g_tokens
        out = {"loss": loss_val, "lr": lr, "grad_norm": gn, "tokens": g_tokens, "examples": g_examples,
               "step_time_s": dt}
        out.update({k: v for k, v in zip(keys, packed[3:])})
        if normaliser is not None:
            out["num_units"] = normaliser
        self.last_metrics = out
        return out

    # ------------------------------------------------------------------------------------ evaluate
    @torch.no_grad()
    def eval_loss(self, batches: Iterable[Mapping], loss_fn: LossFn) -> dict[str, float]:
        """Loss over ``batches`` (this rank's share), normalised by the global unit count.

        Each batch is evaluated with its own ``num_units`` as normaliser (so the loss is a batch mean);
        batch results are weighted by ``num_units`` (1 when absent), summed over ranks and divided by the
        total. Metrics are combined like in :meth:`step`. Returns ``{"loss", *metrics, "num_units"}``."""
        model = self.module
        was_training = model.training
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        try:
            for batch in batches:
                batch = to_device(batch, self.device)
                u = float(batch["num_units"]) if "num_units" in batch else 1.0
                with self.autocast():
                    loss, metrics = loss_fn(model, batch, u if "num_units" in batch else None)
                for k, v in [("loss", loss), *metrics.items()]:
                    v = torch.as_tensor(v).detach().double().to(self.device).reshape(())
                    sums[k] = sums.get(k, 0.0) + (v if _is_sum_metric(k) else v * u)
                sums["num_units"] = sums.get("num_units", 0.0) + torch.tensor(u, dtype=torch.float64,
                                                                              device=self.device)
        finally:
            model.train(was_training)
        keys = sorted(distributed.broadcast_object(sorted(sums)) if self.dist.enabled else sums)
        vec = torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64, device=self.device).reshape(())
                           for k in keys]) if keys else torch.zeros(0, dtype=torch.float64)
        vals = dict(zip(keys, distributed.all_reduce_sum(vec).tolist()))
        n = vals.get("num_units", 0.0)
        return {k: (v if (_is_sum_metric(k) or k == "num_units") else v / max(n, 1e-12)) for k, v in vals.items()}

    def _run_eval(self, evaluate: Callable[[nn.Module], Mapping[str, float]]) -> dict[str, float]:
        t0 = time.perf_counter()
        was = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                res = {k: float(v) for k, v in dict(evaluate(self.module)).items()}
        finally:
            self.module.train(was)
        self.last_eval = res
        rec = {"step": self.step_count, **{f"eval/{k}": v for k, v in res.items()},
               "eval/time_s": time.perf_counter() - t0}
        self.run.metrics.write(rec)
        self._tb_write(rec)
        return res

    # ----------------------------------------------------------------------------------------- fit
    def fit(self, sampler, make_batch: Callable[[list[int]], Mapping], loss_fn: LossFn, *,
            evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
            on_step: Callable[[int, dict], None] | None = None, desc: str | None = None) -> dict:
        """Train from ``self.step_count`` to ``total_steps``.

        ``sampler.microbatches(s)`` gives this rank's example-index lists for step ``s``;
        ``make_batch(indices)`` builds a (CPU) batch dict; ``evaluate(model)`` returns metrics (logged with
        an ``eval/`` prefix every ``cfg.eval_every`` steps and at the end); ``on_step(step, metrics)`` runs
        after every step, before evaluation and checkpointing, so a checkpoint at step s holds what it changed
        (e.g. sample generations, extra_state). Returns a summary dict."""
        cfg = self.cfg
        pbar = self._progress(desc or self.run.stage)
        win_t, win_tok, win_ex, win_steps = 0.0, 0, 0, 0
        try:
            for s in range(self.step_count, self.total_steps):
                t0 = time.perf_counter()
                mbs = [make_batch(ix) for ix in sampler.microbatches(s)]
                self._t_train += time.perf_counter() - t0  # batch building counts as training time
                m = self.step(mbs, loss_fn)
                win_t += time.perf_counter() - t0
                win_tok += m["tokens"]
                win_ex += m["examples"]
                win_steps += 1
                step = self.step_count
                last = step == self.total_steps
                if step % cfg.log_every == 0 or last:
                    rec = self._record(m, win_t, win_tok, win_ex, win_steps, sampler)
                    self.run.metrics.write(rec)
                    self._tb_write(rec)
                    if pbar is not None:
                        pbar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                         tok_s=f"{rec['tokens_per_s']:.0f}", refresh=False)
                    win_t, win_tok, win_ex, win_steps = 0.0, 0, 0, 0
                if on_step is not None:
                    on_step(step, m)
                if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and not last:
                    self._run_eval(evaluate)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if pbar is not None:
                    pbar.update(1)
        finally:
            if pbar is not None:
                pbar.close()
        if evaluate is not None:
            self._run_eval(evaluate)
        return self.summary()

    def _record(self, m: dict, win_t: float, win_tok: int, win_ex: int, win_steps: int, sampler=None) -> dict:
        tps = win_tok / win_t if win_t > 0 else 0.0
        rec = {"step": self.step_count}
        if sampler is not None and hasattr(sampler, "epoch"):
            rec["epoch"] = round(sampler.epoch(self.step_count), 6)
        rec.update({"loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"], "tokens_per_s": tps,
                    "examples_per_s": win_ex / win_t if win_t > 0 else 0.0,
                    "steps_per_s": win_steps / win_t if win_t > 0 else 0.0,
                    "mfu": self.mfu(tps)})
        rec.update({k: v for k, v in m.items() if k not in rec and k not in ("step_time_s",)})
        return rec

    def log(self, record: Mapping[str, Any]) -> None:
        """Write an extra metrics record (``step`` defaults to the current step)."""
        rec = {"step": self.step_count, **record}
        self.run.metrics.write(rec)
        self._tb_write(rec)

    def mfu(self, tokens_per_s: float) -> float:
        """Model FLOPs utilisation per device for a global throughput of ``tokens_per_s``."""
        if tokens_per_s <= 0:
            return 0.0
        return 6.0 * self._n_matmul * tokens_per_s / self.world_size / self.peak_flops()

    def summary(self) -> dict:
        tps = self._tokens_total / self._t_train if self._t_train > 0 else 0.0
        out = {"steps": self.step_count, "train_time_s": round(self._t_train, 3), "tokens_per_s": tps,
               "mfu": self.mfu(tps) if tps else 0.0}
        if self.last_metrics:
            out["final_loss"] = self.last_metrics.get("loss")
        if self.last_eval:
            out["eval"] = dict(self.last_eval)
        if self.resumed_from is not None:
            out["resumed_from"] = self.resumed_from
        return out

    # ----------------------------------------------------------------------------- progress / tb
    def _progress(self, desc: str):
        if not (self.cfg.progress and self.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step_count, desc=desc, unit="step",
                    dynamic_ncols=True, leave=True)

    def _tb_write(self, rec: Mapping[str, Any]) -> None:
        if not (getattr(self.cfg, "tensorboard", False) and self.is_main):
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard=true needs the tensorboard package (pip install tensorboard)") \
                    from None
            self._tb = SummaryWriter(log_dir=str(self.run.path / "tensorboard"), purge_step=self.step_count)
        step = int(rec.get("step", self.step_count))
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ------------------------------------------------------------------------------ checkpoints
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_params}

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N/`` (atomic) and keep the last ``cfg.keep_checkpoints``."""
        step = self.step_count
        rngs = distributed.all_gather_object(rng_state())
        path = None
        if self.is_main:
            path = self.run.checkpoint_dir(step)
            with atomic_dir(path) as tmp:
                torch.save(self.trainable_state(), tmp / "weights.pt")
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save({"step": step, "total_steps": self.total_steps, "world_size": self.world_size,
                            "schedule": vars(self.schedule).copy(), "rng": rngs,
                            "extra": {k: _stateful_get(v) for k, v in self.extra_state.items()}},
                           tmp / "state.pt")
            for old in self.run.checkpoint_steps()[:-self.cfg.keep_checkpoints]:
                shutil.rmtree(self.run.checkpoint_dir(old), ignore_errors=True)
        distributed.barrier()
        return path

    def _maybe_resume(self) -> int | None:
        if not getattr(self.cfg, "resume", False):
            return None
        ckpt = self.run.latest_checkpoint()
        if ckpt is None:
            return None
        self.load_checkpoint(ckpt)
        return self.step_count

    def load_checkpoint(self, ckpt: str | Path) -> None:
        ckpt = Path(ckpt)
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        weights = torch.load(ckpt / "weights.pt", map_location=self.device, weights_only=True)
        missing = [n for n, _ in self.named_params if n not in weights]
        if missing:
            raise ConfigError(f"checkpoint {ckpt} does not match the model (no weights for '{missing[0]}'); "
                              f"set resume=false or choose another output_dir")
        with torch.no_grad():
            for name, p in self.named_params:
                p.copy_(weights[name])
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=self.device,
                                                  weights_only=False))
        self.step_count = int(state["step"])
        rngs = state.get("rng") or []
        if rngs:
            set_rng_state(rngs[self.dist.rank] if len(rngs) == self.world_size else rngs[0])
        for name, obj in self.extra_state.items():
            if name in state.get("extra", {}):
                _stateful_set(obj, state["extra"][name])
        self.run.truncate_after(self.step_count)
        distributed.barrier()

    # ----------------------------------------------------------------------------------- final
    def save_final(self, model: nn.Module | None, tokenizer) -> Path:
        """Write ``RUN/model/`` in Hugging Face format (rank 0) and return its path.

        DDP wrappers are removed. A PEFT model is saved merged (``cfg.lora.save == "merged"``; the adapters
        are merged *in place*, so call this last) or as the adapter only (``"adapter"``)."""
        from posttrain.models.load import save_model, unwrap_model

        m = unwrap_model(model if model is not None else self.module)
        path = self.run.model_dir
        if self.is_main:
            if _is_peft(m):
                lora = getattr(self.cfg, "lora", None)
                if lora is not None and lora.save == "adapter":
                    with atomic_dir(path) as tmp:
                        m.save_pretrained(tmp)
                        if tokenizer is not None:
                            tokenizer.save_pretrained(tmp)
                else:
                    save_model(m.merge_and_unload(), tokenizer, path)
            else:
                save_model(m, tokenizer, path)
        distributed.barrier()
        return path


def _is_peft(model: nn.Module) -> bool:
    import sys

    if "peft" not in sys.modules:  # nothing can be a PeftModel unless peft was imported (saves ~0.4 s)
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)
