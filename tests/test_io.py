"""Image I/O: every common format reads as RGB float32 in [0, 1]; bad files fail naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data.io import ImageReadError, image_to_tensor, list_images, read_image, tensor_to_image, write_image


def _rgb_u8(h: int = 6, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip_is_exact_at_8_bits(tmp_path):
    data = _rgb_u8()
    path = write_image(tmp_path / "sub" / "x.png", data.astype(np.float32) / 255.0)  # creates the folder
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (6, 10, 3)
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), data)
    # Tensors go through the same path.
    write_image(tmp_path / "t.png", image_to_tensor(out))
    np.testing.assert_array_equal(read_image(tmp_path / "t.png"), out)
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_tensor_conversions_round_trip():
    img = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    tensor = image_to_tensor(img)
    assert tensor.shape == (3, 5, 7)
    np.testing.assert_array_equal(tensor_to_image(tensor), img)
    np.testing.assert_array_equal(tensor_to_image(tensor[None]), img)  # a batch of one
    assert tensor_to_image(torch.full((3, 2, 2), 2.0)).max() == 1.0


def test_grayscale_rgba_palette_cmyk(tmp_path):
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (4, 6, 3)
    np.testing.assert_allclose(out[:, :, 1], gray / 255.0, atol=1e-6)
    assert np.array_equal(out[:, :, 0], out[:, :, 2])

    rgba = np.dstack([_rgb_u8(4, 6), np.full((4, 6), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), rgba[:, :, :3] / 255.0, atol=1e-6)

    palette = Image.fromarray(_rgb_u8(4, 6)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.save(tmp_path / "palette.png")
    expected = np.asarray(palette.convert("RGB"), dtype=np.float32) / 255.0
    np.testing.assert_allclose(read_image(tmp_path / "palette.png"), expected, atol=1e-6)

    Image.fromarray(_rgb_u8(4, 6)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (4, 6, 3) and 0 <= out.min() and out.max() <= 1


def test_transparent_pixels_are_composited_on_black(tmp_path):
    colour = np.full((2, 3, 3), (200, 100, 50), np.uint8)
    alpha = np.array([[0, 128, 255], [255, 64, 0]], np.uint8)
    Image.fromarray(np.dstack([colour, alpha]), "RGBA").save(tmp_path / "rgba.png")
    expected = colour / 255.0 * (alpha[:, :, None] / 255.0)
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), expected, atol=1e-6)
    gray = Image.fromarray(np.dstack([np.full((2, 3), 200, np.uint8), alpha]), "LA")
    gray.save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png")[:, :, 0], 200 / 255 * alpha / 255, atol=1e-6)
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 255, 255, 10, 20, 30])
    palette.putdata([0, 1])
    palette.info["transparency"] = 0  # index 0, white, is transparent
    palette.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_allclose(
        read_image(tmp_path / "p.png")[0], [[0, 0, 0], [10 / 255, 20 / 255, 30 / 255]], atol=1e-6
    )


def test_16_bit_png_keeps_precision(tmp_path):
    values = np.array([[0, 1000, 30000], [45000, 65000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.shape == (2, 3, 3)
    # 8-bit quantisation would be off by up to 1/510; 16 bits are kept exactly.
    np.testing.assert_allclose(out[:, :, 0], values / 65535.0, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    data = np.zeros((4, 8, 3), dtype=np.uint8)
    data[:, :4] = 255  # left half white
    image = Image.fromarray(data)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "rotated.jpg")
    assert out.shape == (8, 4, 3), "width and height swapped"
    assert out[:3].mean() > 0.9 and out[5:].mean() < 0.1, "the left half is now on top"


def test_bad_files_fail_naming_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="text.png"):
        read_image(tmp_path / "text.png")
    write_image(tmp_path / "full.png", np.random.default_rng(0).random((64, 64, 3)))
    raw = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="unknown image extension"):
        write_image(tmp_path / "x.unknown", np.zeros((2, 2, 3)))


def test_list_images_sorted_and_filtered(tmp_path):
    for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images(tmp_path / "nope")


def test_decompression_bomb_is_an_image_read_error_naming_the_file(tmp_path, monkeypatch):
    write_image(tmp_path / "huge.png", np.zeros((40, 50, 3)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # refused above 2 x 900 = 1800 pixels
    with pytest.raises(ImageReadError, match=r"cannot read image .*huge\.png: Image size \(2000 pixels\)"):
        read_image(tmp_path / "huge.png")


def test_original_error_message_of_a_reraised_worker_exception():
    from data.io import original_error_message

    text = (
        "Caught ValueError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise ValueError("ValueError: not this line")\n'
        "ValueError: sizes differ: a.png is 4x4\nsecond line\n"
    )
    assert original_error_message(text) == "sizes differ: a.png is 4x4"
    chained = text.replace("Caught ValueError", "Caught ImageReadError") + (
        "\nDuring handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n  ...\ndata.io.ImageReadError: cannot read image b.png: truncated\n"
    )
    assert original_error_message(chained) == "cannot read image b.png: truncated"
    assert ImageReadError(chained).args == ("cannot read image b.png: truncated",)
    assert original_error_message("plain message") == "plain message"


def test_written_files_get_the_normal_mode_and_no_temporary_is_left(tmp_path, monkeypatch):
    import os

    from data.captions import CaptionRow, write_caption_csv

    old = os.umask(0o022)
    try:
        image = write_image(tmp_path / "out.png", np.zeros((2, 2, 3)))
        write_caption_csv(tmp_path / "c.csv", [CaptionRow(str(image), "a dot", "noisy")])
    finally:
        os.umask(old)
    for name in ("out.png", "c.csv"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o644), name  # not 0o600
    with pytest.raises(ValueError, match="unknown image extension"):
        write_image(tmp_path / "bad.unknown", np.zeros((2, 2, 3)))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)  # fails inside the write
    with pytest.raises(OSError, match="No space left"):
        write_image(tmp_path / "broken.png", np.zeros((2, 2, 3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "out.png"]


def test_atomic_open_keeps_the_old_file_when_a_write_fails_midway(tmp_path):
    from data.io import atomic_open

    target = tmp_path / "table.csv"
    target.write_text("old\n")
    for fsync in (False, True):

        class Midway(Exception):
            pass

        with pytest.raises(Midway), atomic_open(target, "w", fsync=fsync, encoding="utf-8") as handle:
            handle.write("new, but only the first half")
            handle.flush()  # the bytes reach the temporary file, not the target
            raise Midway
        assert target.read_text() == "old\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]  # no temporary file left
    with atomic_open(target, "wb", fsync=True) as handle:
        handle.write(b"new\n")
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    with pytest.raises(ValueError, match="mode must be"), atomic_open(target, "a"):
        pass
