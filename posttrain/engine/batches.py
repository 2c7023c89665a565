"""Deterministic, step-addressed data order.

The training stream is the concatenation of epoch permutations of ``range(num_examples)``, permutation ``e``
drawn from a generator seeded by ``(seed, e)``. Optimizer step ``s`` consumes stream positions
``[s·G, (s+1)·G)`` where ``G = micro_batch · grad_accum · world`` is the global batch. Rank ``r`` takes the
``r``-th contiguous slice of ``G / world`` of them and cuts it into micro-batches of ``micro_batch``.

Consequences:

* random access by step: resuming at step ``s`` needs no saved sampler state;
* the *set* of examples of a step depends only on ``(seed, G)``: 1 rank × batch 8 sees the same global
  examples as 2 ranks × batch 4, or 1 rank × batch 2 × accumulation 4 — which, with the engine's global
  normaliser, makes all of these produce the same update;
* an epoch boundary may fall inside a step (the step then mixes the end of one permutation and the start of
  the next); ``epoch(step)`` reports fractional epochs.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=8)
def _permutation(num_examples: int, seed: int, epoch: int, shuffle: bool) -> tuple[int, ...]:
    if not shuffle:
        return tuple(range(num_examples))
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63 - 1))
    return tuple(torch.randperm(num_examples, generator=g).tolist())


class StepSampler:
    """Which example indices this rank uses at optimizer step ``s``.

    Args:
        num_examples: dataset size (rows after packing, when packing).
        global_batch: examples per optimizer step over all ranks and accumulation micro-batches.
        seed: data-order seed.
        rank, world: this process's place.
        micro_batch: examples per forward/backward on one rank (default: all of this rank's share).
        shuffle: False keeps the dataset order (each epoch the same).
    """

    def __init__(self, num_examples: int, global_batch: int, seed: int = 0, rank: int = 0, world: int = 1,
                 micro_batch: int | None = None, *, shuffle: bool = True):
        if num_examples < 1:
            raise ValueError("num_examples must be >= 1")
        if global_batch < 1 or global_batch % world:
            raise ValueError(f"global_batch {global_batch} must be a positive multiple of world {world}")
        per_rank = global_batch // world
        micro_batch = per_rank if micro_batch is None else micro_batch
        if micro_batch < 1 or per_rank % micro_batch:
            raise ValueError(f"per-rank batch {per_rank} must be a multiple of micro_batch {micro_batch}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} out of range for world {world}")
        self.num_examples, self.global_batch, self.seed = num_examples, global_batch, seed
        self.rank, self.world, self.micro_batch, self.shuffle = rank, world, micro_batch, shuffle
        self.per_rank = per_rank

    @classmethod
    def from_config(cls, cfg, num_examples: int, rank: int = 0, world: int = 1) -> "StepSampler":
        return cls(num_examples, cfg.batch_size * cfg.grad_accum * world, cfg.seed, rank, world,
                   cfg.batch_size)

    @property
    def grad_accum(self) -> int:
        return self.per_rank // self.micro_batch

    @property
    def steps_per_epoch(self) -> float:
        return self.num_examples / self.global_batch

    def epoch(self, step: int) -> float:
        """Epochs completed after ``step`` optimizer steps."""
        return step * self.global_batch / self.num_examples

    def _positions(self, start: int, stop: int) -> list[int]:
        N = self.num_examples
        out: list[int] = []
        pos = start
        while pos < stop:
            e, off = divmod(pos, N)
            take = min(stop - pos, N - off)
            out.extend(_permutation(N, self.seed, e, self.shuffle)[off:off + take])
            pos += take
        return out

    def global_indices(self, step: int) -> list[int]:
        """All ``global_batch`` example indices of optimizer step ``step`` (every rank's)."""
        return self._positions(step * self.global_batch, (step + 1) * self.global_batch)

    def rank_indices(self, step: int) -> list[int]:
        start = step * self.global_batch + self.rank * self.per_rank
        return self._positions(start, start + self.per_rank)

    def microbatches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches (lists of example indices) for optimizer step ``step``."""
        idx = self.rank_indices(step)
        mb = self.micro_batch
        return [idx[i:i + mb] for i in range(0, len(idx), mb)]


def eval_shards(num_examples: int, batch_size: int, rank: int = 0, world: int = 1,
                max_batches: int = 0) -> list[list[int]]:
    """Sequential evaluation batches; rank ``r`` gets batches ``r, r + world, ...``.

    ``max_batches`` (> 0) caps the number of batches over all ranks."""
    batches = [list(range(i, min(i + batch_size, num_examples))) for i in range(0, num_examples, batch_size)]
    if max_batches:
        batches = batches[:max_batches]
    return batches[rank::world]
