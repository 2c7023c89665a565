"""KTO's reference point ``z_0`` under data parallelism: every rank uses the mean over ALL ranks' mismatched
rows, the same value one process computes on the whole batch (2 gloo ranks, float64)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from posttrain.losses.preference import kto_reference_point
from posttrain.stages.dpo import kto_reference_point_across_ranks

# sequence log-probs of 6 mismatched rows (policy, reference); rank 0 gets rows 0-3, rank 1 rows 4-5
POLICY = [-10.0, -12.0, -9.0, -11.0, -3.0, -4.0]
REF = [-11.0, -12.5, -9.5, -11.0, -8.0, -9.0]
# differences 1, .5, .5, 0 | 5, 5: whole batch mean 12/6 = 2.0; rank 0 alone 0.5, rank 1 alone 5.0


def _rank(rank: int, init_file: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = slice(0, 4) if rank == 0 else slice(4, 6)
        pol = torch.tensor(POLICY[rows], dtype=torch.float64, requires_grad=True)
        z0 = kto_reference_point_across_ranks(pol, torch.tensor(REF[rows], dtype=torch.float64))
        out[rank] = (float(z0), z0.requires_grad)
    finally:
        dist.destroy_process_group()


def test_every_rank_uses_the_whole_batch_reference_point(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.spawn(_rank, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
        got = dict(out)
    whole = float(kto_reference_point(torch.tensor(POLICY, dtype=torch.float64),
                                      torch.tensor(REF, dtype=torch.float64)))
    assert whole == 2.0
    assert got == {0: (2.0, False), 1: (2.0, False)}  # not 0.5 / 5.0, the ranks' own means; no gradient


def test_one_process_is_the_local_reference_point():
    pol, ref = torch.tensor(POLICY[:4], dtype=torch.float64), torch.tensor(REF[:4], dtype=torch.float64)
    assert float(kto_reference_point_across_ranks(pol, ref)) == 0.5
    # the max(0, .) of the paper: a policy closer to the reference than 0 on average gives z_0 = 0
    assert float(kto_reference_point_across_ranks(ref, pol)) == 0.0
