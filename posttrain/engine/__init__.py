"""The one training loop for every stage: run directory, data order, optimizer, schedule, trainer.

* :class:`Run` (:mod:`.run`) — the run directory: config, metrics, checkpoints, samples, summary, DONE.
* :class:`StepSampler` (:mod:`.batches`) — deterministic, step-addressed micro-batches of example indices.
* :class:`LRSchedule` (:mod:`.schedule`) — warmup + cosine / linear / constant.
* :func:`build_optimizer` (:mod:`.optim`) — AdamW without decay on biases and norms.
* :class:`Trainer` (:mod:`.trainer`) — accumulation with a global normaliser, DDP, clipping, divergence
  checks, checkpoint/resume, metrics, MFU, progress, final save.
* :mod:`.distributed` — torchrun set-up and collectives.
"""

from . import distributed
from .batches import StepSampler, eval_shards
from .optim import build_optimizer, optimizer_from_config
from .run import Run, RunDirError
from .schedule import LRSchedule
from .trainer import Trainer, measure_peak_flops, seed_everything

__all__ = ["Run", "RunDirError", "StepSampler", "eval_shards", "LRSchedule", "build_optimizer",
           "optimizer_from_config", "Trainer", "seed_everything", "measure_peak_flops", "distributed"]
