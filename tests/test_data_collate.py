"""Collation: padding sides, the [2B, T] pair layout, left-padded prompts."""

from __future__ import annotations

import pytest
import torch

from posttrain.data import Encoded, collate_lm, collate_pairs, collate_prompts, pad_sequences


def E(ids, mask):
    return Encoded(list(ids), list(mask), prompt_len=mask.index(1) if 1 in mask else len(mask))


def test_pad_sequences_both_sides():
    seqs = [[5, 6, 7], [8], []]
    assert pad_sequences(seqs, 0).tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert pad_sequences(seqs, 9, side="left").tolist() == [[5, 6, 7], [9, 9, 8], [9, 9, 9]]
    assert pad_sequences(seqs, 0, pad_to=5).shape == (3, 5)
    assert pad_sequences(seqs, 0).dtype == torch.long
    with pytest.raises(ValueError):
        pad_sequences(seqs, 0, side="middle")


def test_collate_lm_right_and_left():
    a, b = E([10, 11, 12, 13], [0, 0, 1, 1]), E([20, 21], [0, 1])
    batch = collate_lm([a, b], pad_id=1)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13], [20, 21, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    left = collate_lm([a, {"input_ids": [20, 21], "loss_mask": [0, 1]}], pad_id=1, side="left")
    assert left["input_ids"].tolist() == [[10, 11, 12, 13], [1, 1, 20, 21]]
    assert left["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert left["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]


def test_collate_pairs_stacks_chosen_then_rejected():
    """Rows 0..B-1 chosen, B..2B-1 rejected; row i and B+i are one pair; one common T."""
    chosen = [E([1, 2, 3], [0, 1, 1]), E([4, 5], [0, 1])]
    rejected = [E([1, 2, 9, 9, 9], [0, 1, 1, 1, 1]), E([4, 6], [0, 1])]
    batch = collate_pairs(chosen, rejected, pad_id=0)
    assert batch["num_pairs"] == 2
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [1, 2, 9, 9, 9], [4, 6, 0, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 2, 5, 2]
    with pytest.raises(ValueError):
        collate_pairs(chosen, rejected[:1], pad_id=0)


def test_collate_prompts_left_padded():
    batch = collate_prompts([[7, 8, 9], [5]], pad_id=1)
    assert batch["input_ids"].tolist() == [[7, 8, 9], [1, 1, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    # the last column is every prompt's last token: generation appends there
    assert batch["input_ids"][:, -1].tolist() == [9, 5]
