"""StepSampler: deterministic, step-addressed data order independent of how the global batch is split."""

import pytest

from posttrain.engine.batches import StepSampler, eval_shards


def test_one_rank_batch8_equals_two_ranks_batch4_and_accumulation():
    N, G = 21, 8
    one = StepSampler(N, G, seed=3)
    two = [StepSampler(N, G, seed=3, rank=r, world=2, micro_batch=4) for r in range(2)]
    acc = StepSampler(N, G, seed=3, micro_batch=2)
    for s in range(10):
        ref = one.microbatches(s)
        assert len(ref) == 1 and len(ref[0]) == 8
        r0, r1 = (t.microbatches(s) for t in two)
        assert r0[0] + r1[0] == ref[0]
        assert sum(acc.microbatches(s), []) == ref[0]
        assert [len(m) for m in acc.microbatches(s)] == [2, 2, 2, 2]
        assert one.global_indices(s) == ref[0]


def test_epochs_are_permutations_and_seeded():
    N = 12
    a = StepSampler(N, 4, seed=0)
    stream = sum((a.global_indices(s) for s in range(6)), [])  # two epochs of 12
    assert sorted(stream[:12]) == list(range(12)) and sorted(stream[12:]) == list(range(12))
    assert stream[:12] != stream[12:]  # a new permutation each epoch
    assert stream[:12] != list(range(12))  # shuffled
    assert StepSampler(N, 4, seed=0).global_indices(4) == a.global_indices(4)  # random access, reproducible
    assert StepSampler(N, 4, seed=1).global_indices(0) != a.global_indices(0)
    assert a.epoch(3) == pytest.approx(1.0) and a.steps_per_epoch == pytest.approx(3.0)


def test_epoch_boundary_inside_a_step():
    N = 10
    s = StepSampler(N, 4, seed=5)
    stream = sum((s.global_indices(k) for k in range(5)), [])  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert s.global_indices(2) == stream[8:12]  # mixes the end of epoch 0 and the start of epoch 1


def test_no_shuffle_and_validation():
    s = StepSampler(5, 2, shuffle=False)
    assert [s.global_indices(k) for k in range(3)] == [[0, 1], [2, 3], [4, 0]]
    with pytest.raises(ValueError):
        StepSampler(10, 6, world=4)
    with pytest.raises(ValueError):
        StepSampler(10, 8, micro_batch=3)


def test_eval_shards_cover_everything_once():
    parts = [eval_shards(11, 3, rank=r, world=2) for r in range(2)]
    flat = sorted(i for p in parts for b in p for i in b)
    assert flat == list(range(11))
    assert parts[0] == [[0, 1, 2], [6, 7, 8]] and parts[1] == [[3, 4, 5], [9, 10]]
    assert eval_shards(11, 3, max_batches=2) == [[0, 1, 2], [3, 4, 5]]
