"""train.context_shuffle: a share of samples conditioned on another sample's DA-CLIP answer."""

from __future__ import annotations

import torch

from irsde.training.stage import mismatch_clean_contexts, shuffle_contexts


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


def test_clean_pairs_take_a_degraded_samples_embeddings_and_nothing_else_moves():
    content, degra = _embeddings(6)
    clean = torch.tensor([True, False, True, False, False, True])
    generator = torch.Generator().manual_seed(0)
    new_content, new_degra = mismatch_clean_contexts(content, degra, clean, 1.0, generator)
    source = new_degra[:, 0].long()
    assert torch.equal(source[~clean], torch.arange(6)[~clean])  # degraded samples keep their own
    assert (~clean[source[clean]]).all()  # every clean one took a degraded sample's answer
    assert torch.equal(new_content, content[source])  # one sample's pair
    donors = set()
    for _ in range(200):
        donors |= set(
            mismatch_clean_contexts(content, degra, clean, 1.0, generator)[1][clean, 0].long().tolist()
        )
    assert donors == {1, 3, 4}  # any degraded sample, at random
    moved = sum(
        int(
            (
                mismatch_clean_contexts(content, degra, clean, 0.5, generator)[1][:, 0].long()
                != torch.arange(6)
            ).sum()
        )
        for _ in range(500)
    )
    assert abs(moved / 1500 - 0.5) < 0.05  # 1500 clean draws, each moved with probability 0.5
    for kinds in (torch.zeros(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool)):  # one kind only
        same = mismatch_clean_contexts(content, degra, kinds, 1.0, generator)
        assert same[0] is content and same[1] is degra
