"""Segmentation readers, samples and metrics, on tiny datasets written in each real layout."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.tasks.images import IMAGENET_MEAN, IMAGENET_STD
from nas.tasks.seg import (
    CAMVID,
    CITYSCAPES,
    VOC,
    ConfusionMatrix,
    SegDataset,
    SegRecord,
    camvid_records,
    cityscapes_records,
    dataset_kind,
    open_seg_dataset,
    voc_records,
)
from nas.tasks.seg import data as seg_data
from supernets.errors import NasError

H, W = 8, 12
REAL_CAMVID = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"


def write_png(path: Path, array: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if palette:   # VOC: the pixel values are the palette indices
        im = Image.frombytes("P", im.size, im.tobytes())
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)
    return path


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def labels(values, h: int = H, w: int = W) -> np.ndarray:
    """An h x w map cycling through ``values`` row-major."""
    values = np.asarray(values, dtype=np.uint8)
    return values[np.arange(h * w) % len(values)].reshape(h, w)


@pytest.fixture
def camvid(tmp_path):
    root = tmp_path / "camvid"
    for split, names in (("train", ["0001TP_006690", "0016E5_00390"]), ("val", ["0016E5_07959"])):
        lines = []
        for i, name in enumerate(names):
            write_png(root / split / f"{name}.png", rgb(i))
            write_png(root / f"{split}annot" / f"{name}.png", labels(range(12)))
            lines.append(f"/SegNet/CamVid/{split}/{name}.png "
                         f"/SegNet/CamVid/{split}annot/{name}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    for city, name in (("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")):
        write_png(root / "leftImg8bit" / "train" / city / f"{name}_leftImg8bit.png", rgb(3))
        write_png(root / "gtFine" / "train" / city / f"{name}_gtFine_labelIds.png",
                  labels([0, 7, 8, 33, 1, 26]))
    return root


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "voc"
    ids = ["2007_000032", "2007_000039"]
    for i, id_ in enumerate(ids):
        root.joinpath("JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb(i)).save(root / "JPEGImages" / f"{id_}.jpg")
        write_png(root / "SegmentationClass" / f"{id_}.png", labels([0, 1, 20, 255, 15]),
                  palette=True)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text(ids[0] + "\n")
    (lists / "val.txt").write_text(ids[1] + "\n")
    (lists / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root


def one_line_error(fn, *parts) -> str:
    """Call ``fn``; it must raise a one-line NasError holding every one of ``parts``."""
    with pytest.raises(NasError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert str(part) in message, (part, message)
    return message


# -- readers --------------------------------------------------------------------------------------

def test_camvid_records(camvid):
    records = camvid_records(camvid, "train")
    assert records == [SegRecord(camvid / "train" / "0001TP_006690.png",
                                 camvid / "trainannot" / "0001TP_006690.png"),
                       SegRecord(camvid / "train" / "0016E5_00390.png",
                                 camvid / "trainannot" / "0016E5_00390.png")]
    assert dataset_kind(camvid) == "camvid"
    assert open_seg_dataset(camvid, "val") == ([SegRecord(
        camvid / "val" / "0016E5_07959.png", camvid / "valannot" / "0016E5_07959.png")], CAMVID)


def test_cityscapes_records(cityscapes):
    records = cityscapes_records(cityscapes, "train")
    assert [r.image.name for r in records] == ["aachen_000000_000019_leftImg8bit.png",
                                               "bochum_000000_000313_leftImg8bit.png"]
    assert records[1].label == (cityscapes / "gtFine" / "train" / "bochum"
                                / "bochum_000000_000313_gtFine_labelIds.png")
    assert open_seg_dataset(cityscapes, "train") == (records, CITYSCAPES)


def test_voc_records(voc):
    assert [r.image.name for r in voc_records(voc, "trainval")] == ["2007_000032.jpg",
                                                                    "2007_000039.jpg"]
    records, spec = open_seg_dataset(voc, "val")
    assert spec is VOC and spec.num_classes == 21
    assert records == [SegRecord(voc / "JPEGImages" / "2007_000039.jpg",
                                 voc / "SegmentationClass" / "2007_000039.png")]


def test_specs():
    assert (CAMVID.num_classes, CITYSCAPES.num_classes, VOC.num_classes) == (11, 19, 21)
    for spec in (CAMVID, CITYSCAPES, VOC):
        assert spec.lut.shape == (256,) and spec.lut.dtype == np.uint8
        assert spec.ignore_index == 255
        assert set(spec.lut) == set(range(spec.num_classes)) | {255}


# -- label mapping ------------------------------------------------------------------------------

def test_camvid_void_is_ignored(camvid):
    label = SegDataset(camvid_records(camvid, "train"), CAMVID)[0]["label"]
    expected = labels(list(range(11)) + [255]).astype(np.int64)
    assert label.dtype == torch.int64 and torch.equal(label, torch.from_numpy(expected))


def test_cityscapes_label_ids_to_train_ids(cityscapes):
    sample = SegDataset(cityscapes_records(cityscapes, "train"), CITYSCAPES)[0]
    # raw 0 unlabeled, 7 road, 8 sidewalk, 33 bicycle, 1 ego vehicle, 26 car
    assert torch.equal(sample["label"], torch.from_numpy(labels([255, 0, 1, 18, 255, 13])).long())
    assert sample["image"].shape == (3, H, W) and sample["image"].dtype == torch.float32


def test_voc_palette_indices_and_boundary(voc):
    assert Image.open(voc / "SegmentationClass" / "2007_000032.png").mode == "P"
    label = SegDataset(voc_records(voc, "train"), VOC)[0]["label"]
    assert torch.equal(label, torch.from_numpy(labels([0, 1, 20, 255, 15])).long())


# -- bad input ----------------------------------------------------------------------------------

def test_label_value_out_of_range(camvid, voc):
    bad = write_png(camvid / "trainannot" / "0001TP_006690.png", labels([3, 12]))
    data = SegDataset(camvid_records(camvid, "train"), CAMVID)
    one_line_error(lambda: data[0], bad, "value 12", "0..11")
    bad = write_png(voc / "SegmentationClass" / "2007_000032.png", labels([0, 21]), palette=True)
    data = SegDataset(voc_records(voc, "train"), VOC)
    one_line_error(lambda: data[0], bad, "value 21", "0..20, 255")


def test_image_without_label_and_label_without_image(camvid, cityscapes, voc):
    gone = camvid / "trainannot" / "0016E5_00390.png"
    gone.unlink()
    one_line_error(lambda: camvid_records(camvid, "train"), gone, "missing label map")
    gone = camvid / "val" / "0016E5_07959.png"
    gone.unlink()
    one_line_error(lambda: camvid_records(camvid, "val"), gone, "missing image")

    city = cityscapes / "leftImg8bit" / "train" / "bochum"
    gone = city / "bochum_000000_000313_leftImg8bit.png"
    gone.unlink()
    one_line_error(lambda: cityscapes_records(cityscapes, "train"), gone, "missing image")
    write_png(gone, rgb(3))
    gone = cityscapes / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    gone.unlink()
    one_line_error(lambda: cityscapes_records(cityscapes, "train"), gone, "missing label map")

    gone = voc / "SegmentationClass" / "2007_000039.png"
    gone.unlink()
    one_line_error(lambda: voc_records(voc, "val"), gone, "missing label map")
    # Records made by hand are checked by the dataset itself, before any sample is read.
    records = [SegRecord(voc / "JPEGImages" / "2007_000039.jpg", gone)]
    one_line_error(lambda: SegDataset(records, VOC), gone, "missing label map")


def test_missing_list_files(camvid, voc):
    (camvid / "val.txt").unlink()
    one_line_error(lambda: camvid_records(camvid, "val"), camvid / "val.txt", "missing")
    listing = voc / "ImageSets" / "Segmentation" / "train.txt"
    listing.unlink()
    one_line_error(lambda: open_seg_dataset(voc, "train"), listing, "missing")
    (camvid / "test.txt").write_text("/SegNet/CamVid/test/a.png\n")
    one_line_error(lambda: camvid_records(camvid, "test"), f"{camvid / 'test.txt'}:1",
                   "expected two paths")
    (camvid / "test.txt").write_text("\n")
    one_line_error(lambda: camvid_records(camvid, "test"), camvid / "test.txt", "no records")


def test_image_and_label_sizes_differ(camvid):
    bad = write_png(camvid / "trainannot" / "0016E5_00390.png", labels([1], H, W + 1))
    data = SegDataset(camvid_records(camvid, "train"), CAMVID)
    one_line_error(lambda: data[1], bad, f"{H}x{W + 1}", f"{H}x{W}", "0016E5_00390.png")


def test_label_map_not_single_channel(camvid):
    bad = write_png(camvid / "trainannot" / "0001TP_006690.png", rgb(5))
    data = SegDataset(camvid_records(camvid, "train"), CAMVID)
    one_line_error(lambda: data[0], bad, "mode RGB")


def test_unknown_split(camvid, cityscapes, voc):
    one_line_error(lambda: camvid_records(camvid, "trainval"), "'trainval'", "train, val, test")
    one_line_error(lambda: cityscapes_records(cityscapes, "valid"), "'valid'")
    one_line_error(lambda: open_seg_dataset(voc, "test"), "'test'", "train, val, trainval")


def test_layouts_not_recognised(tmp_path, cityscapes):
    import shutil
    shutil.rmtree(cityscapes / "gtFine")
    one_line_error(lambda: open_seg_dataset(cityscapes, "train"), cityscapes, "no gtFine/")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(lambda: open_seg_dataset(empty, "train"), empty, "train.txt", "leftImg8bit/",
                   "JPEGImages/", "SegmentationClass/")
    one_line_error(lambda: dataset_kind(tmp_path / "nowhere"), "no such folder")


def test_augmentation_needs_crop(camvid):
    one_line_error(lambda: SegDataset(camvid_records(camvid, "train"), CAMVID, augment=True),
                   "crop")


# -- samples ------------------------------------------------------------------------------------

def test_augmentation_reproducible_and_varies_by_epoch(camvid):
    records = camvid_records(camvid, "train")

    def sample(epoch, index, seed=0):
        data = SegDataset(records, CAMVID, crop=(6, 10), augment=True, seed=seed)
        data.set_epoch(epoch)
        return data[index]

    a, b = sample(3, 1), sample(3, 1)
    assert a["image"].shape == (3, 6, 10) and a["label"].shape == (6, 10)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["index"] == 1
    others = [sample(e, 1) for e in range(5)]
    assert any(not torch.equal(a["image"], o["image"]) for o in others if o is not a)
    assert not all(torch.equal(sample(e, 1)["image"], sample(e, 1, seed=1)["image"])
                   for e in range(5))


def test_resize_without_augmentation(camvid):
    sample = SegDataset(camvid_records(camvid, "train"), CAMVID, crop=(16, 20))[0]
    assert sample["image"].shape == (3, 16, 20) and sample["label"].shape == (16, 20)
    assert set(sample["label"].unique().tolist()) <= set(range(11)) | {255}
    kept = SegDataset(camvid_records(camvid, "train"), CAMVID)[0]
    expected = (rgb(0).astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(kept["image"].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


@pytest.mark.parametrize("crop", [(5, 7), (12, 16)])   # crop inside the image; padded
def test_crop_pad_and_flip_keep_image_and_label_aligned(tmp_path, monkeypatch, crop):
    # Scale 1: no interpolation, so every pixel can be traced to its source exactly. Each image
    # pixel encodes its row and column; the label is a function of them.
    monkeypatch.setattr(seg_data, "SCALE_RANGE", (1.0, 1.0))
    rows, cols = np.mgrid[:H, :W]
    target = (rows * W + cols) % 11
    image = np.stack([rows * 20 + 10, cols * 20 + 10, np.full_like(rows, 128)], axis=-1)
    records = [SegRecord(write_png(tmp_path / "i.png", image),
                         write_png(tmp_path / "l.png", target))]
    flips = set()
    for epoch in range(8):
        data = SegDataset(records, CAMVID, crop=crop, augment=True, seed=0)
        data.set_epoch(epoch)
        sample = data[0]
        pixels = sample["image"].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
        pixels = np.rint(pixels * 255).astype(int)
        label = sample["label"].numpy()
        padded = label == 255
        assert np.allclose(sample["image"].numpy()[:, padded], 0, atol=1e-6)   # the mean
        assert padded.sum() == crop[0] * crop[1] - min(crop[0], H) * min(crop[1], W)
        r, c = (pixels[~padded, 0] - 10) // 20, (pixels[~padded, 1] - 10) // 20
        assert np.array_equal(label[~padded], (r * W + c) % 11)
        cols_seen = (pixels[..., 1] - 10) // 20
        row0 = cols_seen[0][~padded[0]]
        flips.add(bool(row0[0] > row0[-1]))
        assert np.all(np.diff(row0) == (-1 if row0[0] > row0[-1] else 1))
    assert flips == {True, False}


# -- metrics ------------------------------------------------------------------------------------

def test_confusion_matrix_by_hand():
    pred = np.array([[0, 1, 1], [1, 3, 0]])
    target = np.array([[0, 0, 1], [1, 255, 2]])   # the pixel predicted as 3 is ignored
    cm = ConfusionMatrix(4)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    iou = cm.iou()
    assert np.allclose(iou[:3], [1 / 3, 2 / 3, 0.0]) and np.isnan(iou[3])
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)

    halves = ConfusionMatrix(4)
    halves.update(pred[:1], target[:1])
    other = ConfusionMatrix(4)
    other.update(pred[1:], target[1:])
    assert np.array_equal(halves.merge(other).matrix, cm.matrix)

    names = ["a", "bb", "ccc", "absent"]
    d = cm.to_dict(names)
    assert d["iou"]["absent"] is None and d["iou"]["bb"] == pytest.approx(2 / 3)
    assert d["miou"] == pytest.approx(1 / 3) and d["pixel_accuracy"] == pytest.approx(0.6)
    lines = cm.table(names).splitlines()
    assert any(line.startswith("absent") and line.endswith("-") for line in lines)
    assert any(line.startswith("mIoU") and line.endswith("33.33") for line in lines)
    assert any(line.startswith("pixel accuracy") and line.endswith("60.00") for line in lines)
    numbers = [line for line in lines if line[-1].isdigit() or line.endswith(" -")]
    assert len({len(line) for line in numbers}) == 1   # right-aligned column

    with pytest.raises(ValueError):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError):
        cm.update(np.array([4]), np.array([0]))


def test_confusion_matrix_empty():
    cm = ConfusionMatrix(3)
    cm.update(np.array([1, 2]), np.array([255, 255]))
    assert np.isnan(cm.miou()) and np.isnan(cm.pixel_accuracy())


# -- the real data -------------------------------------------------------------------------------

def test_real_camvid():
    if not (REAL_CAMVID / "train.txt").is_file():
        pytest.skip(f"no CamVid at {REAL_CAMVID}")
    records, spec = open_seg_dataset(REAL_CAMVID, "val")
    assert spec is CAMVID and len(records) == 101
    data = SegDataset(records[:2], spec)
    for i in range(2):
        sample = data[i]
        assert sample["image"].shape == (3, 180, 240) and sample["label"].shape == (180, 240)
        assert set(sample["label"].unique().tolist()) <= set(range(11)) | {255}
