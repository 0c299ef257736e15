"""The DA-CLIP caption CSV: parsing, validation, writing, the caption dataset."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from data import DEFAULT_DEGRADATIONS
from data.captions import (
    CaptionDataset,
    CaptionRow,
    parse_title,
    read_caption_csv,
    read_caption_table,
    write_caption_csv,
)
from data.io import read_image, write_image
from data.transforms import clip_transform


def _images(folder, n: int, size: tuple[int, int] = (20, 30)) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / "LQ" / f"img{i}.png"
        write_image(path, rng.random((*size, 3), dtype=np.float32))
        paths.append(path)
    return paths


def test_parse_title_splits_on_last_separator():
    assert parse_title("a dog: noisy") == ("a dog", "noisy")
    # The official code split on every ": " and broke on this caption.
    assert parse_title("a sign reading: stop here: low-light") == ("a sign reading: stop here", "low-light")


@pytest.mark.parametrize("title", ["a dog noisy", ": noisy", "a dog: ", "a dog:noisy"])
def test_parse_title_rejects_malformed(title):
    with pytest.raises(ValueError):
        parse_title(title)


def test_write_read_round_trip_relative_and_absolute(tmp_path):
    inside = _images(tmp_path / "ds", 2)
    outside = _images(tmp_path / "elsewhere", 1)
    rows = [
        CaptionRow(str(inside[0]), "a cat: on a mat", "noisy"),
        CaptionRow(str(inside[1]), 'a "quoted"\tcaption', "hazy"),
        CaptionRow(str(outside[0]), "a tree", "snowy"),
    ]
    csv_path = tmp_path / "ds" / "captions.csv"
    write_caption_csv(csv_path, rows)

    with open(csv_path, newline="") as handle:
        raw = list(csv.reader(handle, delimiter="\t"))
    assert raw[0] == ["filepath", "title"]
    assert raw[1] == ["LQ/img0.png", "a cat: on a mat: noisy"]  # inside the CSV folder: relative
    assert raw[3][0] == str(outside[0].resolve())  # outside: absolute

    back = read_caption_csv(csv_path, DEFAULT_DEGRADATIONS, allow_outside_root=True)
    assert [(r.caption, r.degradation) for r in back] == [(r.caption, r.degradation) for r in rows]
    assert [r.filepath for r in back] == [str(p.resolve()) for p in inside + outside]

    # Moving the dataset folder keeps the relative rows valid.
    moved = tmp_path / "moved"
    (tmp_path / "ds").rename(moved)
    back = read_caption_csv(moved / "captions.csv", allow_outside_root=True)
    assert back[0].filepath == str((moved / "LQ" / "img0.png").resolve())


def test_write_resolves_relative_rows_against_relative_to(tmp_path):
    (image,) = _images(tmp_path, 1)
    write_caption_csv(
        tmp_path / "out" / "c.csv", [CaptionRow("LQ/img0.png", "x", "noisy")], relative_to=tmp_path
    )
    (row,) = read_caption_csv(
        tmp_path / "out" / "c.csv", allow_outside_root=True
    )  # the image is outside out/
    assert row.filepath == str(image.resolve())


def test_append_adds_rows_and_checks_header(tmp_path):
    images = _images(tmp_path, 3)
    csv_path = tmp_path / "c.csv"
    write_caption_csv(csv_path, [CaptionRow(str(images[0]), "one", "noisy")], append=True)  # creates
    write_caption_csv(csv_path, [CaptionRow(str(images[1]), "two", "hazy")], append=True)
    assert [r.caption for r in read_caption_csv(csv_path)] == ["one", "two"]

    other = tmp_path / "other.csv"
    other.write_text("path\tcaption\nx\ty\n")
    with pytest.raises(ValueError, match="cannot append"):
        write_caption_csv(other, [CaptionRow(str(images[2]), "three", "hazy")], append=True)


def test_write_rejects_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="empty caption"):
        write_caption_csv(tmp_path / "c.csv", [CaptionRow("a.png", "  ", "noisy")])
    with pytest.raises(ValueError, match="degradation"):
        write_caption_csv(tmp_path / "c.csv", [CaptionRow("a.png", "x", "bad: name")])
    assert not (tmp_path / "c.csv").exists()  # atomic: nothing half-written


def test_read_accepts_extra_columns_and_official_layout(tmp_path):
    (image,) = _images(tmp_path, 1)
    # pandas' to_csv(sep="\t") writes an index column first.
    (tmp_path / "c.csv").write_text(f"\tfilepath\ttitle\n0\t{image}\ta photo: rainy\n\n")
    (row,) = read_caption_csv(tmp_path / "c.csv")
    assert row == CaptionRow(str(image), "a photo", "rainy")


@pytest.mark.parametrize(
    "line, message",
    [
        ("LQ/img0.png\ta dog noisy", "row 3: title"),
        ("LQ/img0.png\t: noisy", "row 3: title .* empty caption"),
        ("LQ/missing.png\ta dog: noisy", "row 3: image file not found"),
        ("LQ/img0.png\ta dog: foggy", "row 3: degradation 'foggy' is not one of"),
        ("LQ/img0.png", "row 3: expected 2"),
    ],
)
def test_read_errors_name_csv_and_row(tmp_path, line, message):
    _images(tmp_path, 1)
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(f"filepath\ttitle\nLQ/img0.png\tgood: noisy\n{line}\n")
    with pytest.raises(ValueError, match=message) as info:
        read_caption_csv(csv_path, DEFAULT_DEGRADATIONS)
    assert str(csv_path) in str(info.value)


@pytest.mark.parametrize(
    "filepath",
    [
        "../../../../../../../../etc/hostname",  # climbs out of the dataset, to a file that exists
        "LQ/../../outside/img0.png",  # an image, but outside the CSV's folder
        "{outside}",  # absolute, elsewhere
    ],
)
def test_rows_outside_the_csv_folder_are_refused_naming_the_row(tmp_path, filepath):
    root = tmp_path / "ds"
    _images(root, 1)
    (outside,) = _images(tmp_path / "outside", 1)
    csv_path = root / "c.csv"
    filepath = filepath.format(outside=outside.parent.parent / "LQ" / "img0.png")
    csv_path.write_text(f"filepath\ttitle\nLQ/img0.png\tgood: noisy\n{filepath}\ta dog: noisy\n")
    with pytest.raises(ValueError) as info:
        read_caption_csv(csv_path)
    message = str(info.value)
    assert message.startswith(f"{csv_path}: row 3: {filepath} is outside the CSV's folder {root}")
    assert "data.allow_outside_root" in message and "\n" not in message


def test_the_switch_allows_images_outside_and_inside_paths_stay_fine(tmp_path):
    root = tmp_path / "ds"
    (inside,) = _images(root, 1)
    (outside,) = _images(tmp_path / "outside", 1)
    csv_path = root / "c.csv"
    lines = ["LQ/img0.png", str(inside), "LQ/./sub/../img0.png", "../outside/LQ/img0.png", str(outside)]
    csv_path.write_text("filepath\ttitle\n" + "".join(f"{line}\tx: noisy\n" for line in lines))
    with pytest.raises(ValueError, match="row 5: ../outside/LQ/img0.png is outside"):
        read_caption_csv(csv_path)
    rows = read_caption_csv(csv_path, allow_outside_root=True)
    assert [r.filepath for r in rows] == [str(inside.resolve())] * 3 + [str(outside.resolve())] * 2
    assert len(CaptionDataset(csv_path, allow_outside_root=True)) == 5
    with pytest.raises(ValueError, match="row 5"):
        CaptionDataset(csv_path)
    # A file that is no image (by its extension) is refused at load too, also with the switch.
    (root / "notes.txt").write_text("hello")
    csv_path.write_text("filepath\ttitle\nnotes.txt\tx: noisy\n")
    with pytest.raises(ValueError, match=r"row 2: notes\.txt is not an image file"):
        read_caption_csv(csv_path, allow_outside_root=True)


def test_stage_one_refuses_a_row_outside_the_dataset_at_start_up(tmp_path, capsys):
    """The /etc/hostname row: one line naming the row, before any run folder (it used to fail in training)."""
    import importlib.util
    from pathlib import Path

    from tests.test_daclip_train import ROOT, _tiny_cfg_overrides, synthetic_captions

    csv_path = synthetic_captions(tmp_path / "data", per_class=2)
    secret = tmp_path / "secret" / "hostname.png"  # an "image" name, outside the dataset
    secret.parent.mkdir()
    secret.write_text("not an image")
    with open(csv_path, "a") as handle:
        handle.write("../secret/hostname.png\ta cat on a sofa: noisy\n")
    spec = importlib.util.spec_from_file_location("_train_daclip", ROOT / "scripts" / "train_daclip.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = [
        "-c",
        str(ROOT / "configs/daclip_tiny.yml"),
        *_tiny_cfg_overrides(tmp_path, csv_path),
        "--no-progress",
    ]
    assert script.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{csv_path}: row 8: ../secret/hostname.png is outside" in err, err
    assert not Path(tmp_path / "runs").exists()


def test_read_errors_on_header_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_caption_csv(tmp_path / "nope.csv")
    (tmp_path / "h.csv").write_text("path,title\n")
    with pytest.raises(ValueError, match="filepath"):
        read_caption_csv(tmp_path / "h.csv")


def test_caption_dataset_items(tmp_path):
    images = _images(tmp_path, 2, size=(40, 70))
    csv_path = tmp_path / "c.csv"
    write_caption_csv(
        csv_path, [CaptionRow(str(images[0]), "a", "snowy"), CaptionRow(str(images[1]), "b", "hazy")]
    )
    dataset = CaptionDataset(csv_path, image_size=32)
    assert len(dataset) == 2 and dataset.degradations == DEFAULT_DEGRADATIONS
    item = dataset[0]
    assert item["image"].shape == (3, 32, 32)
    assert item["caption"] == "a" and item["degradation"] == "snowy"
    assert item["degradation_index"] == DEFAULT_DEGRADATIONS.index("snowy")
    torch.testing.assert_close(item["image"], clip_transform(read_image(images[0]), 32))

    # A custom vocabulary defines the indices; a row outside it fails at load.
    custom = CaptionDataset(csv_path, degradations=("hazy", "snowy"), image_size=32)
    assert custom[0]["degradation_index"] == 1
    with pytest.raises(ValueError, match="'snowy' is not one of"):
        CaptionDataset(csv_path, degradations=("hazy",))

    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["caption"] == ["a", "b"]
    assert batch["degradation_index"].tolist() == [DEFAULT_DEGRADATIONS.index(d) for d in ("snowy", "hazy")]


# ----------------------------------------------------------------------------- BLIP captioning


def _tiny_blip(folder) -> None:
    """A randomly initialised BLIP with tiny dims and an offline word-level tokenizer, saved to ``folder``."""
    transformers = pytest.importorskip("transformers")
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[DEC]",
        "a",
        "photo",
        "of",
        "cat",
        "dog",
        "red",
        "car",
    ]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    config = transformers.BlipConfig(
        text_config={
            **tiny,
            "vocab_size": len(words),
            "encoder_hidden_size": 32,
            "bos_token_id": words.index("[DEC]"),
            "sep_token_id": words.index("[SEP]"),
            "pad_token_id": 0,
            "max_position_embeddings": 32,
        },
        vision_config={**tiny, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.BlipForConditionalGeneration(config).save_pretrained(folder)
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    transformers.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _paired(tmp_path):
    from data.paired import make_paired_dataset

    clean = tmp_path / "clean"
    rng = np.random.default_rng(0)
    for name in ("one", "two", "three"):
        write_image(clean / f"{name}.png", rng.random((24, 24, 3)))
    return make_paired_dataset(clean, tmp_path / "ds", ["noisy", "hazy"], val_fraction=0)


def test_make_captions_with_a_tiny_blip(tmp_path, capsys):
    from data.captioning import BlipCaptioner
    from scripts.make_captions import main

    _tiny_blip(tmp_path / "blip")
    dataset = _paired(tmp_path)
    assert {r.caption for r in read_caption_csv(dataset.train_csv)} == {"a photo"}  # the placeholder
    argv = [
        "--root",
        str(dataset.train_root),
        "--out",
        str(dataset.train_csv),
        "--model",
        str(tmp_path / "blip"),
    ]
    argv += ["--degradations", "noisy,hazy", "--batch-size", "2", "--max-new-tokens", "5", "--no-progress"]
    assert main(argv) == 0
    assert "6 rows" in capsys.readouterr().out

    rows = read_caption_csv(dataset.train_csv, ["noisy", "hazy"])
    assert len(rows) == 6
    captioner = BlipCaptioner.from_pretrained(str(tmp_path / "blip"), max_new_tokens=5)
    for row in rows:
        gt = read_image(row.filepath.replace("/LQ/", "/GT/"))
        (expected,) = captioner([Image.fromarray((gt * 255).round().astype(np.uint8))])
        assert row.caption == " ".join(expected.split()) and row.caption
    assert CaptionDataset(dataset.train_csv, ["noisy", "hazy"], image_size=32)[0]["image"].shape == (
        3,
        32,
        32,
    )


def test_captioning_is_batched_deduplicated_and_resumable(tmp_path):
    from data.captioning import caption_paired_dataset

    dataset = _paired(tmp_path)
    calls: list[int] = []

    class Interrupted(Exception):
        pass

    def flaky(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise Interrupted
        return [f"caption {len(calls)} {i}" for i in range(len(images))]

    with pytest.raises(Interrupted):
        caption_paired_dataset(
            dataset.train_root, dataset.train_csv, lambda: flaky, ["noisy", "hazy"], batch_size=2
        )
    assert calls == [2, 1]  # 3 distinct GT images (each is in both types), in batches of 2

    calls.clear()
    result = caption_paired_dataset(
        dataset.train_root,
        dataset.train_csv,
        lambda: lambda ims: [f"late {i}" for i in range(len(ims))],
        ["noisy", "hazy"],
        batch_size=2,
    )
    assert (result.rows, result.unique_images, result.captioned) == (6, 3, 1)
    captions = sorted(r.caption for r in read_caption_csv(dataset.train_csv))
    assert captions == sorted(["caption 1 0", "caption 1 1", "late 0"] * 2)

    def no_model():
        raise AssertionError("a finished rerun must not load the model")

    again = caption_paired_dataset(dataset.train_root, dataset.train_csv, no_model, ["noisy", "hazy"])
    assert again.captioned == 0 and sorted(r.caption for r in read_caption_csv(dataset.train_csv)) == captions


def test_missing_model_fails_fast_offline(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    import data.captioning as captioning
    from scripts.make_captions import main

    dataset = _paired(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*huggingface-cli download"):
        captioning.resolve_blip(captioning.DEFAULT_BLIP, cache_dir=tmp_path / "hf")
    argv = [
        "--root",
        str(dataset.train_root),
        "--out",
        str(tmp_path / "c.csv"),
        "--cache-dir",
        str(tmp_path / "hf"),
    ]
    assert main(argv + ["--degradations", "noisy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blip-image-captioning-large" in err

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes = []
    monkeypatch.setattr(captioning, "_hub_reachable", lambda timeout: probes.append(timeout) or False)
    with pytest.raises(FileNotFoundError, match="unreachable"):
        captioning.resolve_blip(captioning.DEFAULT_BLIP, cache_dir=tmp_path / "hf")
    assert probes == [3.0]
    with pytest.raises(FileNotFoundError, match="folder not found"):
        captioning.resolve_blip(str(tmp_path / "no_such_model"))
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        captioning.resolve_blip(str(tmp_path / "not_a_model"))


def test_bom_csv_reads_and_appends_and_non_utf8_names_file_and_row(tmp_path):
    _images(tmp_path, 2)
    csv_path = tmp_path / "excel.csv"
    # Excel and Notepad save "UTF-8" with a byte-order mark; it must not hide the 'filepath' column.
    csv_path.write_bytes("filepath\ttitle\nLQ/img0.png\tun café: noisy\n".encode("utf-8-sig"))
    (row,) = read_caption_csv(csv_path)
    assert (row.caption, row.degradation) == ("un café", "noisy")
    write_caption_csv(
        csv_path, [CaptionRow("LQ/img1.png", "a dog", "hazy")], relative_to=tmp_path, append=True
    )
    assert [r.caption for r in read_caption_csv(csv_path)] == ["un café", "a dog"]

    latin = tmp_path / "latin.csv"
    latin.write_bytes(
        "filepath\ttitle\nLQ/img0.png\ta dog: noisy\nLQ/img1.png\tun café: hazy\n".encode("latin-1")
    )
    with pytest.raises(ValueError, match=r"latin\.csv: row 3: not UTF-8 text \(byte 0xe9\)"):
        read_caption_csv(latin)
    with pytest.raises(ValueError, match=r"latin\.csv: row 3: not UTF-8"):
        write_caption_csv(
            latin, [CaptionRow("LQ/img1.png", "a dog", "hazy")], relative_to=tmp_path, append=True
        )
    # A quoted caption spanning two lines is one row: the row number is the CSV row, not the line.
    quoted = tmp_path / "quoted.csv"
    quoted.write_bytes(b'filepath\ttitle\nLQ/img0.png\t"two\nlines: noisy"\nLQ/img1.png\tcaf\xe9: hazy\n')
    with pytest.raises(ValueError, match=r"quoted\.csv: row 3: not UTF-8"):
        read_caption_csv(quoted)

    table = tmp_path / "captions.txt"
    table.write_bytes("image\tcaption\n".encode("utf-8-sig") + "img0.png\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"captions\.txt: line 2: not UTF-8"):
        read_caption_table(table)
    table.write_bytes("img0.png\tun café\r\n".encode("utf-8-sig"))
    assert read_caption_table(table) == {"img0": "un café"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_make_captions_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    from scripts.make_captions import main

    argv = ["--root", str(tmp_path), "--out", str(tmp_path / "c.csv"), "--device", "cuda"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith("error: --device: 'cuda' requested")
        and "no CUDA device" in err
    )
    assert not (tmp_path / "c.csv").exists()
