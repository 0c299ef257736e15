"""Degradation classification: confusion matrices, the report, the PNG, labelled sets, the script."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from daclip.classify import (
    ClassificationReport,
    LabelledImages,
    confusion_matrices,
    labelled_images,
    save_confusion_png,
)
from daclip.convert import to_official_state_dict
from daclip.pretrained import build_daclip
from daclip.zero_shot import ZeroShotClassifier
from data.captions import CaptionRow, write_caption_csv
from data.io import write_image
from tests.test_daclip_model import tiny_daclip

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("noisy", "hazy", "snowy")


def test_report_accuracy_table_and_dict() -> None:
    clip = torch.tensor([[2, 1, 0], [0, 3, 0], [1, 1, 0]])
    daclip = torch.tensor([[3, 0, 0], [0, 3, 0], [0, 0, 2]])
    report = ClassificationReport(NAMES, {"clip": clip, "daclip": daclip})
    assert report.accuracy("clip") == pytest.approx(5 / 8)
    assert report.accuracy("daclip") == pytest.approx(1.0)
    assert report.per_class_accuracy("clip") == pytest.approx([2 / 3, 1.0, 0.0])
    assert report.support() == [3, 3, 2]
    table = report.format_table()
    assert "CLIP" in table and "DA-CLIP" in table
    noisy_line = next(line for line in table.splitlines() if line.startswith("noisy"))
    assert noisy_line.split()[-2:] == ["66.67", "100.00"]
    assert table.splitlines()[-1].split()[-2:] == ["62.50", "100.00"]
    assert report.to_dict()["methods"]["clip"]["per_class_accuracy"]["snowy"] == 0.0
    assert "rows: true" in report.format_confusion("clip")


def test_confusion_matrices_against_explicit_predictions() -> None:
    model = tiny_daclip(perturb_control=True)
    g = torch.Generator().manual_seed(4)
    images = torch.randn(6, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        plain = model.encode_image(images, control=False)
        _, degra = model.encode_image(images, control=True)
    # Name embeddings = plain CLIP embeddings of the first three images: CLIP gets those right.
    classifier = ZeroShotClassifier(plain[:3], NAMES)
    dataset = [{"image": images[i], "degradation_index": int(labels[i])} for i in range(6)]
    loader = DataLoader(dataset, batch_size=4)
    matrices = confusion_matrices(model, loader, classifier, torch.device("cpu"))
    for method, emb in (("clip", plain), ("daclip", degra)):
        predicted = (F.normalize(emb, dim=-1) @ F.normalize(plain[:3], dim=-1).T).argmax(dim=-1)
        expected = torch.zeros(3, 3, dtype=torch.int64)
        for true, guess in zip(labels.tolist(), predicted.tolist()):
            expected[true, guess] += 1
        assert torch.equal(matrices[method], expected), method
    assert matrices["clip"].diagonal()[:3].sum() >= 3
    # probabilities and top-k from the classifier
    top = classifier.topk(plain[:1], k=2)[0]
    assert top[0][0] == "noisy" and top[0][1] >= top[1][1]


def test_confusion_png_is_drawn_with_pil(tmp_path) -> None:
    identity = save_confusion_png(torch.eye(3, dtype=torch.int64) * 4, NAMES, tmp_path / "a.png", "perfect")
    empty = save_confusion_png(np.zeros((3, 3), dtype=np.int64), NAMES, tmp_path / "b.png")
    a = np.asarray(Image.open(identity).convert("RGB"))
    b = np.asarray(Image.open(empty).convert("RGB"))
    assert a.shape[0] > 3 * 48 and a.shape[1] > 3 * 48
    full_blue = np.all(a == (0, 0, 255), axis=-1)  # a cell with rate 1 is filled pure blue
    assert full_blue.sum() >= 3 * 40 * 40 and not np.all(b == (0, 0, 255), axis=-1).any()
    with pytest.raises(ValueError, match="does not match"):
        save_confusion_png(np.zeros((2, 2)), NAMES, tmp_path / "c.png")


def _paired_root(root: Path, names=NAMES[:2], per_class: int = 2) -> list[Path]:
    paths = []
    rng = np.random.default_rng(0)
    for name in names:
        for i in range(per_class):
            image = rng.random((24, 24, 3), dtype=np.float32)
            for sub in ("LQ", "GT"):
                write_image(root / name / sub / f"{i}.png", image)
            paths.append(root / name / "LQ" / f"{i}.png")
    return paths


def test_labelled_sets_from_a_paired_root_and_a_caption_csv(tmp_path) -> None:
    paths = _paired_root(tmp_path / "paired")  # no "snowy" folder: skipped
    from_root = labelled_images(tmp_path / "paired", NAMES, image_size=32)
    assert [(Path(p).parent.parent.name, label) for p, label in from_root.items] == [
        ("noisy", 0),
        ("noisy", 0),
        ("hazy", 1),
        ("hazy", 1),
    ]
    assert from_root[0]["image"].shape == (3, 32, 32)
    csv_path = tmp_path / "labels.csv"
    write_caption_csv(csv_path, [CaptionRow(str(p), "a photo", "snowy") for p in paths[:2]])
    from_csv = labelled_images(csv_path, NAMES)
    assert isinstance(from_csv, LabelledImages) and [label for _, label in from_csv.items] == [2, 2]
    with pytest.raises(FileNotFoundError, match="labelled set not found"):
        labelled_images(tmp_path / "nowhere", NAMES)
    with pytest.raises(ValueError, match="no <degradation>/LQ images"):
        labelled_images(tmp_path / "paired", ("rainy",))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_classify_script_top3_and_side_by_side_report(tmp_path, capsys) -> None:
    model_config = ROOT / "configs/open_clip/ViT-Tiny-16.json"
    torch.manual_seed(0)
    model, _ = build_daclip("ViT-Tiny-16", "", model_config)
    weights = tmp_path / "daclip_tiny_official.pt"
    torch.save({"state_dict": to_official_state_dict(model.state_dict())}, weights)
    paths = _paired_root(tmp_path / "paired", names=NAMES, per_class=2)
    common = ["-w", str(weights), "--clip-model", "ViT-Tiny-16", "--model-config", str(model_config)]
    common += ["--degradations", ",".join(NAMES), "--device", "cpu"]
    out = tmp_path / "results" / "cls"
    code = _script("classify").main([*common, str(paths[0]), str(tmp_path / "paired" / "hazy" / "LQ")])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ".png:" in line]
    assert len(lines) == 3  # one file + a folder of two
    probabilities = [float(part.split()[-1].rstrip("%")) for part in lines[0].split(": ", 1)[1].split(", ")]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 100.0 + 1e-6

    assert _script("classify").main([*common, "--labelled", str(tmp_path / "paired"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"clip", "daclip"} and report["support"] == [2, 2, 2]
    # At initialisation DA-CLIP's degradation embedding is plain CLIP's: identical matrices.
    assert report["methods"]["clip"]["confusion"] == report["methods"]["daclip"]["confusion"]
    for method in ("clip", "daclip"):
        assert Image.open(out / f"confusion_{method}.png").size[0] > 100
    assert "DA-CLIP" in (out / "report.txt").read_text()
    # A second evaluation never overwrites the first.
    assert _script("classify").main([*common, "--labelled", str(tmp_path / "paired"), "--out", str(out)]) == 0
    assert (tmp_path / "results" / "cls_1" / "report.json").is_file()

    capsys.readouterr()
    assert _script("classify").main(["-w", str(tmp_path / "missing.pt"), str(paths[0])]) == 2
    assert "missing.pt" in capsys.readouterr().err


# ----------------------------------------------------------------------------- several degradations per image


def test_multilabel_predictions_and_metrics_on_a_hand_made_matrix() -> None:
    from daclip.classify import multilabel_metrics
    from daclip.zero_shot import multilabel_predictions

    names = ("hazy", "rainy", "low-light")
    probabilities = np.array(
        [
            [0.60, 0.30, 0.10],  # true hazy+rainy: top-2 -> hazy, rainy (exact)
            [0.50, 0.10, 0.40],  # true hazy+rainy: top-2 -> hazy, low-light
            [0.20, 0.45, 0.35],  # true low-light: top-1 rainy, and low-light >= 0.3 -> rainy, low-light
            [0.90, 0.05, 0.05],  # true hazy: hazy (exact)
        ]
    )
    labels = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=bool)
    predicted = multilabel_predictions(probabilities, threshold=0.3, num_true=labels.sum(axis=1))
    assert predicted.tolist() == [
        [True, True, False],
        [True, False, True],
        [False, True, True],
        [True, False, False],
    ]
    # Without the true counts: the threshold, and at least the best type.
    assert multilabel_predictions(probabilities, threshold=0.55).tolist() == [
        [True, False, False],
        [True, False, False],
        [False, True, False],
        [True, False, False],
    ]
    metrics = multilabel_metrics(predicted, labels, names)
    # hazy: TP 3, FP 0, FN 0; rainy: TP 1, FP 1, FN 1; low-light: TP 1, FP 1, FN 0.
    assert metrics.precision() == pytest.approx([1.0, 0.5, 0.5])
    assert metrics.recall() == pytest.approx([1.0, 0.5, 1.0])
    assert metrics.f1() == pytest.approx([1.0, 0.5, 2 / 3])
    assert metrics.support() == [3, 2, 1] and metrics.exact_accuracy() == pytest.approx(0.5)
    assert metrics.micro() == pytest.approx((5 / 7, 5 / 6, 10 / 13))
    assert metrics.macro_f1() == pytest.approx((1.0 + 0.5 + 2 / 3) / 3)
    table = metrics.format_table()
    rainy = next(line for line in table.splitlines() if line.startswith("rainy"))
    assert rainy.split()[1:] == ["2", "50.00", "50.00", "50.00"]
    assert "exact-set accuracy 50.00" in table
    assert metrics.to_dict()["per_type"]["low-light"]["recall"] == 1.0
    never = multilabel_metrics(np.zeros((2, 3), bool), np.zeros((2, 3), bool), names)
    assert np.isnan(never.precision()[0]) and never.exact_accuracy() == 1.0
    with pytest.raises(ValueError, match="must both be"):
        multilabel_metrics(predicted, labels[:, :2], names)


def test_restoring_photos_does_not_import_the_classification_report() -> None:
    """The multi-label rule lives with zero-shot classification, so inference loads no report module."""
    import subprocess
    import sys

    probe = "import sys, irsde.inference.restore; print('daclip.classify' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert out == "False"


def test_classify_script_multi_label_report_on_a_mixed_set(tmp_path, capsys) -> None:
    model_config = ROOT / "configs/open_clip/ViT-Tiny-16.json"
    torch.manual_seed(0)
    model, _ = build_daclip("ViT-Tiny-16", "", model_config)
    weights = tmp_path / "daclip_tiny_official.pt"
    torch.save({"state_dict": to_official_state_dict(model.state_dict())}, weights)
    root = tmp_path / "mixed"
    _paired_root(root, names=("hazy+noisy", "snowy", "hazy+rainy"), per_class=2)  # rainy: not a class here
    common = ["-w", str(weights), "--clip-model", "ViT-Tiny-16", "--model-config", str(model_config)]
    common += ["--degradations", ",".join(NAMES), "--device", "cpu", "--multi-label"]
    out = tmp_path / "results" / "multi"
    assert _script("classify").main([*common, "--labelled", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "DA-CLIP (threshold 0.3 or top-k)" in printed and "exact-set accuracy" in printed
    report = json.loads((out / "report.json").read_text())
    images = report["methods"]["daclip"]["images"]
    assert len(images) == 4 and report["threshold"] == 0.3  # the hazy+rainy folder is skipped
    assert sorted(tuple(i["true"]) for i in images) == [("noisy", "hazy")] * 2 + [("snowy",)] * 2
    for item in images:
        assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert len(item["predicted"]) >= len(item["true"])
    assert report["methods"]["daclip"]["per_type"]["noisy"]["support"] == 2
    assert (out / "report.txt").read_text().count(".png: ") == 8  # per image, both methods
    # Unlabelled images: the present set and every probability.
    assert _script("classify").main([*common, "--threshold", "0.0", str(root / "snowy" / "LQ")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ".png:" in line]
    assert len(lines) == 2 and all(line.split(": ")[1].split(" | ")[0].count("+") == 2 for line in lines)
    assert _script("classify").main(["-w", str(weights), "--threshold", "0.5", str(root)]) == 2
    assert "--threshold needs --multi-label" in capsys.readouterr().err
