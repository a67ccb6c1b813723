import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE_CLASSES, FIXTURE_FRAMES, FIXTURE_TRACKS, make_gtsrb, zip_tree
from edgepure.data import open_dataset
from edgepure.data.gtsrb import load_gtsrb, open_gtsrb, track_split
from edgepure.runtime.errors import DataError, ImageDecodeError

N_TRAIN = len(FIXTURE_CLASSES) * FIXTURE_TRACKS * FIXTURE_FRAMES


@pytest.mark.parametrize("where", ["parent", "gtsrb", "zip", "folder_of_zips"])
def test_every_accepted_path_form(gtsrb_dir: Path, tmp_path: Path, where: str) -> None:
    path = {
        "parent": gtsrb_dir,
        "gtsrb": gtsrb_dir / "GTSRB",
        "zip": zip_tree(gtsrb_dir, tmp_path / "GTSRB.zip"),
    }.get(where)
    if where == "folder_of_zips":
        path = tmp_path / "zips"
        path.mkdir()
        zip_tree(gtsrb_dir, path / "GTSRB_Final_Training_Images.zip")
    ds = load_gtsrb(path, "trainval")
    assert len(ds) == N_TRAIN
    assert ds.images.shape == (N_TRAIN, 32, 32, 3)
    assert set(ds.labels.tolist()) == set(FIXTURE_CLASSES)
    assert len(ds.class_names) == 43


def test_zip_and_directory_agree(gtsrb_dir: Path, gtsrb_zip: Path) -> None:
    a = load_gtsrb(gtsrb_dir, "trainval")
    b = load_gtsrb(gtsrb_zip, "trainval")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_track_split_is_by_track_and_seeded(gtsrb_dir: Path) -> None:
    samples = open_gtsrb(gtsrb_dir).train_samples()
    tr, va = track_split(samples, 0.25, seed=0)
    assert len(tr) + len(va) == len(samples) and not set(tr) & set(va)
    train_tracks = {(samples[i].label, samples[i].track) for i in tr}
    val_tracks = {(samples[i].label, samples[i].track) for i in va}
    assert not train_tracks & val_tracks  # no physical sign on both sides
    assert {lbl for lbl, _ in val_tracks} == set(FIXTURE_CLASSES)  # every class validated
    tr2, va2 = track_split(samples, 0.25, seed=0)
    np.testing.assert_array_equal(va, va2)
    splits = {tuple(track_split(samples, 0.25, seed=s)[1]) for s in range(6)}
    assert len(splits) > 1


def test_splits_through_open_dataset(gtsrb_dir: Path) -> None:
    tr = open_dataset(str(gtsrb_dir), "train", val_fraction=0.25)
    va = open_dataset(str(gtsrb_dir), "val", val_fraction=0.25)
    assert len(tr) + len(va) == N_TRAIN
    assert not set(tr.names) & set(va.names)
    # a subset seed never moves images across the split
    va_sub = open_dataset(str(gtsrb_dir), "val", n=3, seed=5, val_fraction=0.25)
    assert set(va_sub.names) <= set(va.names) and len(va_sub) == 3


@pytest.mark.parametrize("in_images", [False, True])
def test_test_split(tmp_path: Path, in_images: bool) -> None:
    root = make_gtsrb(tmp_path / "d", test_csv_in_images=in_images)
    ds = load_gtsrb(root, "test")
    assert len(ds) == 2 * len(FIXTURE_CLASSES)
    assert ds.labels.tolist() == list(FIXTURE_CLASSES) * 2


def test_roi_crop_uses_scaled_roi(gtsrb_dir: Path) -> None:
    layout = open_gtsrb(gtsrb_dir)
    s = layout.train_samples()[0]
    full = layout.read(s, size=None)
    crop = layout.read(s, size=None, roi=True)
    assert full.shape == (40, 42, 3)
    assert crop.shape == (32, 32, 3)  # ROI (10,8)-(72,70) of 84×80 scaled to 42×40
    np.testing.assert_array_equal(crop, full[4:36, 5:37])


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        load_gtsrb(tmp_path / "nothing", "train")


def test_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="not a GTSRB tree"):
        load_gtsrb(tmp_path / "x", "train")


def test_not_a_zip(tmp_path: Path) -> None:
    p = tmp_path / "GTSRB.zip"
    p.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="GTSRB.zip: not a readable zip"):
        load_gtsrb(p, "train")


def test_truncated_image_is_named(gtsrb_dir: Path) -> None:
    victim = gtsrb_dir / "GTSRB/Final_Training/Images/00014/00002_00001.ppm"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ImageDecodeError, match=r"00014/00002_00001\.ppm: truncated image data"):
        load_gtsrb(gtsrb_dir, "trainval")


def test_corrupt_image_is_named(gtsrb_dir: Path) -> None:
    victim = gtsrb_dir / "GTSRB/Final_Training/Images/00001/00000_00000.ppm"
    victim.write_bytes(b"JUNK" * 10)
    with pytest.raises(ImageDecodeError, match=r"00001/00000_00000\.ppm"):
        load_gtsrb(gtsrb_dir, "trainval")


def test_label_out_of_range(gtsrb_dir: Path) -> None:
    csv = gtsrb_dir / "GTSRB/Final_Training/Images/00017/GT-00017.csv"
    csv.write_text(csv.read_text().replace(";17\n", ";43\n", 1))
    with pytest.raises(DataError, match=r"GT-00017\.csv line 2.*label 43 out of range"):
        load_gtsrb(gtsrb_dir, "trainval")


def test_label_of_other_folder(gtsrb_dir: Path) -> None:
    csv = gtsrb_dir / "GTSRB/Final_Training/Images/00017/GT-00017.csv"
    csv.write_text(csv.read_text().replace(";17\n", ";3\n", 1))
    with pytest.raises(DataError, match="ClassId 3 in the folder of class 17"):
        load_gtsrb(gtsrb_dir, "trainval")


def test_missing_csv_and_missing_image(gtsrb_dir: Path) -> None:
    d = gtsrb_dir / "GTSRB/Final_Training/Images/00033"
    (d / "00000_00000.ppm").unlink()
    with pytest.raises(DataError, match=r"lists 00000_00000\.ppm, which is not in"):
        load_gtsrb(gtsrb_dir, "trainval")
    (d / "GT-00033.csv").unlink()
    with pytest.raises(DataError, match=r"missing its annotation file GT-00033\.csv"):
        load_gtsrb(gtsrb_dir, "trainval")


def test_bad_csv_header(gtsrb_dir: Path) -> None:
    csv = gtsrb_dir / "GTSRB/Final_Training/Images/00001/GT-00001.csv"
    csv.write_text("Filename,ClassId\nx.ppm,1\n")
    with pytest.raises(DataError, match=r"GT-00001\.csv: expected the GTSRB columns"):
        load_gtsrb(gtsrb_dir, "trainval")


def test_test_split_without_labels(tmp_path: Path) -> None:
    root = make_gtsrb(tmp_path / "d")
    shutil.move(root / "GTSRB/Final_Test/GT-final_test.csv", root / "GTSRB/Final_Test/Images/GT-final_test.test.csv")
    with pytest.raises(DataError, match="GTSRB_Final_Test_GT.zip"):
        load_gtsrb(root, "test")
    with pytest.raises(DataError, match="no test part"):
        load_gtsrb(make_gtsrb(tmp_path / "e", with_test=False), "test")


def test_unknown_split(gtsrb_dir: Path) -> None:
    with pytest.raises(DataError, match="unknown GTSRB split 'dev'"):
        load_gtsrb(gtsrb_dir, "dev")


@pytest.mark.gtsrb
def test_real_training_set(real_gtsrb: Path) -> None:
    layout = open_gtsrb(real_gtsrb)
    samples = layout.train_samples()
    assert len(samples) == 39209
    counts = np.bincount([s.label for s in samples], minlength=43)
    assert counts[0] == 210 and counts[1] == 2220 and counts[2] == 2250
    tr, va = track_split(samples, 0.1, seed=0)
    assert not {(samples[i].label, samples[i].track) for i in tr} & {(samples[i].label, samples[i].track) for i in va}
    assert 0.08 < len(va) / len(samples) < 0.14
