"""The CLIP input transform must match open_clip's preprocessing of the truncated uint8 image."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_transform, clip_transform_batch


@pytest.mark.parametrize("shape", [(300, 400), (97, 61), (224, 224), (500, 230)])
def test_matches_open_clip_eval_preprocess(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.random((*shape, 3)).astype(np.float32)
    preprocess = open_clip.image_transform(224, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    expected = preprocess(Image.fromarray((img * 255).astype(np.uint8)))
    out = clip_transform(img)
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_uint8_conversion_truncates():
    # 0.999 * 255 = 254.7: truncation gives 254, rounding would give 255.
    img = np.full((224, 224, 3), 0.999, dtype=np.float32)
    out = clip_transform(img, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(out, torch.full_like(out, 254 / 255))


def test_tensor_and_batch_inputs_agree_with_array():
    rng = np.random.default_rng(0)
    img = rng.random((64, 80, 3)).astype(np.float32)
    tensor = torch.from_numpy(img).permute(2, 0, 1)
    single = clip_transform(img, size=32)
    torch.testing.assert_close(clip_transform(tensor, size=32), single)
    torch.testing.assert_close(clip_transform_batch(tensor[None].repeat(2, 1, 1, 1), size=32)[1], single)
    with pytest.raises(ValueError, match="RGB"):
        clip_transform(np.zeros((8, 8)))
