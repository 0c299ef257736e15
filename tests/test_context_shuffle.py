"""train.context_shuffle: a share of samples conditioned on another sample's DA-CLIP answer."""

from __future__ import annotations

import torch

from irsde.training.stage import shuffle_contexts


def _embeddings(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(batch, dtype=torch.float32)[:, None]
    return rows.expand(batch, 3) + 100.0, rows.expand(batch, 5)  # row i holds the value i (+100)


def test_every_shuffled_sample_takes_one_other_sample_s_pair_of_embeddings():
    content, degra = _embeddings(6)
    new_content, new_degra = shuffle_contexts(content, degra, 1.0, torch.Generator().manual_seed(0))
    source = new_degra[:, 0].long()
    assert (source != torch.arange(6)).all()  # never its own answer
    assert torch.equal(new_degra, degra[source]) and torch.equal(
        new_content, content[source]
    )  # one sample's pair


def test_the_share_is_kept_and_zero_changes_nothing():
    content, degra = _embeddings(4)
    generator = torch.Generator().manual_seed(1)
    moved = sum(
        int((shuffle_contexts(content, degra, 0.3, generator)[1][:, 0] != torch.arange(4)).sum())
        for _ in range(500)
    )
    assert abs(moved / 2000 - 0.3) < 0.04  # 2000 draws: 0.3 within about 4 standard errors
    same = shuffle_contexts(content, degra, 0.0, generator)
    assert same[0] is content and same[1] is degra
    single = shuffle_contexts(content[:1], degra[:1], 1.0, generator)  # no other sample to take from
    assert torch.equal(single[1], degra[:1])
