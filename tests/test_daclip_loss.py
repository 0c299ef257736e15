"""DA-CLIP losses: closed forms, the class-aware variant, and exactness under two-process data parallel."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from daclip.loss import DaCLIPLoss, class_aware_degradation_loss, clip_loss
from daclip.train import sync_gradients
from tests.test_daclip_model import tiny_daclip


def _cross_entropy_rows(logits: list[list[float]], targets: list[int]) -> float:
    total = 0.0
    for row, target in zip(logits, targets):
        total += math.log(sum(math.exp(v) for v in row)) - row[target]
    return total / len(targets)


def test_clip_loss_matches_a_hand_computation() -> None:
    image = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64), dim=-1)
    text = F.normalize(torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 1.0]], dtype=torch.float64), dim=-1)
    scale = torch.tensor(7.0, dtype=torch.float64)
    sim = (image @ text.T).tolist()
    logits = [[7.0 * v for v in row] for row in sim]
    columns = [list(col) for col in zip(*logits)]
    expected = 0.5 * (_cross_entropy_rows(logits, [0, 1, 2]) + _cross_entropy_rows(columns, [0, 1, 2]))
    assert clip_loss(image, text, scale).item() == pytest.approx(expected, rel=1e-12)


def test_class_aware_loss_does_not_punish_same_degradation_pairs() -> None:
    """Perfect degradation embeddings: class-aware loss -> 0, the paper's CLIP loss stays >= ln(N/K)."""
    names = torch.eye(3, 8, dtype=torch.float64)  # (K, E), orthonormal names
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    degra = names[labels]  # each embedding equals its class name
    scale = torch.tensor(100.0, dtype=torch.float64)
    class_aware = class_aware_degradation_loss(degra, names, labels, scale)
    paper = clip_loss(degra, names[labels], scale)
    assert class_aware.item() < 1e-6
    assert paper.item() == pytest.approx(math.log(3), abs=1e-6)  # 3 identical positives per row
    # and the class-aware loss is the K-way cross-entropy
    logits = (scale * degra @ names.T).tolist()
    wrong = torch.tensor([1, 0, 0, 1, 2, 1, 2, 0, 2])
    expected = _cross_entropy_rows(logits, wrong.tolist())
    got = class_aware_degradation_loss(degra, names, wrong, scale)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_daclip_loss_sums_the_two_terms_with_the_exp_logit_scale() -> None:
    torch.manual_seed(0)
    content, degra, captions = torch.randn(3, 6, 16).unbind(0)
    names = torch.randn(4, 16)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    log_scale = torch.tensor(math.log(20.0))
    out = DaCLIPLoss("clip")(content, degra, captions, names, labels, log_scale)
    n = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    content_term = clip_loss(n(content), n(captions), torch.tensor(20.0))
    degra_term = clip_loss(n(degra), n(names)[labels], torch.tensor(20.0))
    torch.testing.assert_close(out.content, content_term)
    torch.testing.assert_close(out.degradation, degra_term)
    torch.testing.assert_close(out.total, content_term + degra_term)
    aware = DaCLIPLoss("class_aware")(content, degra, captions, names, labels, log_scale)
    torch.testing.assert_close(aware.degradation, F.cross_entropy(20.0 * n(degra) @ n(names).T, labels))
    with pytest.raises(ValueError, match="degradation_loss"):
        DaCLIPLoss("cosine")


# ----------------------------------------------------------------------------- two processes

GLOBAL_BATCH = 6
NUM_NAMES = 3


def _global_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {
        "images": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g),
        "captions": torch.randn(GLOBAL_BATCH, 32, generator=g),
        "names": torch.randn(NUM_NAMES, 32, generator=g),
        "labels": torch.tensor([0, 1, 1, 2, 0, 2]),
    }


def _loss_and_grads(mode: str, rank: int, world: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = tiny_daclip(seed=5, perturb_control=True).train()
    batch = _global_batch()
    shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    content, degra = model(batch["images"][shard])
    out = DaCLIPLoss(mode)(
        content, degra, batch["captions"][shard], batch["names"], batch["labels"][shard], model.logit_scale
    )
    out.total.backward()
    sync_gradients(model.controller.parameters(), [model.logit_scale])
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.total.detach(), grads


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {mode: _loss_and_grads(mode, rank, world) for mode in ("clip", "class_aware")}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_data_parallel_matches_one_process(tmp_path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for mode in ("clip", "class_aware"):
        loss, grads = _loss_and_grads(mode, rank=0, world=1)
        assert grads["controller.zero_linears.0.weight"].abs().sum() > 0
        for rank in range(2):
            dist_loss, dist_grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)[mode]
            torch.testing.assert_close(dist_loss, loss, rtol=1e-5, atol=1e-6)
            assert dist_grads.keys() == grads.keys()
            for name, grad in grads.items():
                torch.testing.assert_close(dist_grads[name], grad, rtol=1e-4, atol=1e-6, msg=f"{mode} {name}")
