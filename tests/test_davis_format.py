"""Tests for pix2seq_d_jax.formats.davis_format (DAVIS id PNG readers and writers)."""
import os

import numpy as np
import pytest
from PIL import Image

from pix2seq_d_jax.formats import davis_format


def test_palette_is_the_voc_colour_map():
  pal = davis_format.DAVIS_PALETTE
  assert pal.shape == (256, 3) and pal.dtype == np.uint8
  np.testing.assert_array_equal(pal[:9], [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                          [0, 0, 128], [128, 0, 128], [0, 128, 128],
                                          [128, 128, 128], [64, 0, 0]])
  np.testing.assert_array_equal(pal[255], [224, 224, 192])
  # Distinct ids must get distinct colours or a viewer could not tell objects apart.
  assert len({tuple(c) for c in pal}) == 256
  with pytest.raises(ValueError):
    pal[0, 0] = 1


def test_palette_png_round_trip_keeps_every_value(tmp_path):
  ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
  path = tmp_path / "sub" / "frame.png"
  davis_format.write_palette_png(path, ids)
  with Image.open(path) as image:
    assert image.mode == "P"
    palette = np.array(image.getpalette()[:768], dtype=np.uint8).reshape(256, 3)
  np.testing.assert_array_equal(palette, davis_format.DAVIS_PALETTE)
  back = davis_format.read_id_png(path)
  assert back.dtype == np.uint8
  np.testing.assert_array_equal(back, ids)


def test_write_palette_png_accepts_bool_and_int(tmp_path):
  mask = np.zeros((3, 4), bool)
  mask[1, 2] = True
  davis_format.write_palette_png(tmp_path / "a.png", mask)
  np.testing.assert_array_equal(davis_format.read_id_png(tmp_path / "a.png"), mask.astype(np.uint8))
  davis_format.write_palette_png(tmp_path / "b.png", np.array([[0, 7], [20, 255]], np.int64))
  np.testing.assert_array_equal(davis_format.read_id_png(tmp_path / "b.png"), [[0, 7], [20, 255]])


@pytest.mark.parametrize("bad, words", [
    (np.array([[0, 256]]), "0..255"),
    (np.array([[0, -1]]), "0..255"),
    (np.array([[0.0, 1.5]]), "integers"),
    (np.zeros((2, 2, 3), np.uint8), "[H, W]"),
])
def test_write_palette_png_rejects_non_id_arrays(tmp_path, bad, words):
  with pytest.raises(ValueError, match=None) as err:
    davis_format.write_palette_png(tmp_path / "x.png", bad)
  assert words in str(err.value)
  assert not (tmp_path / "x.png").exists()


def test_read_id_png_accepts_grayscale(tmp_path):
  ids = np.array([[0, 3], [255, 1]], np.uint8)
  Image.fromarray(ids).save(tmp_path / "gray.png")
  np.testing.assert_array_equal(davis_format.read_id_png(tmp_path / "gray.png"), ids)


def test_read_id_png_rejects_rgb_and_explains(tmp_path):
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
  with pytest.raises(ValueError) as err:
    davis_format.read_id_png(tmp_path / "rgb.png")
  message = str(err.value)
  assert "rgb.png" in message and "'RGB'" in message
  assert "write_palette_png" in message and "single-channel" in message


def test_read_id_png_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.png does not exist"):
    davis_format.read_id_png(tmp_path / "nope.png")


def test_write_davis_results_layout_and_round_trip(tmp_path):
  maps = np.random.default_rng(0).integers(0, 5, size=(3, 6, 7)).astype(np.uint8)
  paths = davis_format.write_davis_results(tmp_path, "bike-packing", maps)
  assert [os.path.relpath(p, tmp_path) for p in paths] == [
      os.path.join("bike-packing", f"0000{t}.png") for t in range(3)]
  names, back = davis_format.read_davis_sequence(tmp_path / "bike-packing")
  assert names == ["00000", "00001", "00002"]
  assert back.dtype == np.uint8
  np.testing.assert_array_equal(back, maps)


def test_write_davis_groundtruth_layout_and_imageset(tmp_path):
  maps = np.zeros((2, 5, 5), np.uint8)
  maps[:, 1:3, 1:3] = 1
  maps[:, 4, 4] = 255
  davis_format.write_davis_groundtruth(tmp_path, "zebra", maps)
  davis_format.write_davis_groundtruth(tmp_path, "bear", maps)
  # Writing a sequence again must not list it twice.
  davis_format.write_davis_groundtruth(tmp_path, "zebra", maps)
  seq_dir = tmp_path / "Annotations_unsupervised" / "480p" / "zebra"
  assert sorted(os.listdir(seq_dir)) == ["00000.png", "00001.png"]
  names, back = davis_format.read_davis_sequence(seq_dir)
  np.testing.assert_array_equal(back, maps)
  split = (tmp_path / "ImageSets" / "2017" / "val.txt").read_text()
  assert split == "bear\nzebra\n"
  assert not any(n.startswith(".") for n in os.listdir(tmp_path / "ImageSets" / "2017"))


def test_write_davis_groundtruth_other_split_and_folder(tmp_path):
  maps = np.ones((1, 4, 4), np.uint8)
  davis_format.write_davis_groundtruth(tmp_path, "dog", maps, split="train",
                                       annotations="Annotations")
  assert (tmp_path / "Annotations" / "480p" / "dog" / "00000.png").is_file()
  assert (tmp_path / "ImageSets" / "2017" / "train.txt").read_text() == "dog\n"
  assert not (tmp_path / "ImageSets" / "2017" / "val.txt").exists()
  with pytest.raises(ValueError, match="Annotations_unsupervised"):
    davis_format.write_davis_groundtruth(tmp_path, "dog", maps, annotations="Masks")


def test_stale_frames_are_refused(tmp_path):
  davis_format.write_davis_results(tmp_path, "cat", np.zeros((3, 4, 4), np.uint8))
  # Same length again is a plain overwrite.
  davis_format.write_davis_results(tmp_path, "cat", np.ones((3, 4, 4), np.uint8))
  with pytest.raises(ValueError, match="00002.png"):
    davis_format.write_davis_results(tmp_path, "cat", np.zeros((2, 4, 4), np.uint8))


@pytest.mark.parametrize("seq", ["", "a/b", "two words", ".."])
def test_bad_sequence_names(tmp_path, seq):
  with pytest.raises(ValueError, match="sequence name"):
    davis_format.write_davis_results(tmp_path, seq, np.zeros((1, 2, 2), np.uint8))


def test_read_davis_sequence_sorts_by_name_and_checks_sizes(tmp_path):
  seq_dir = tmp_path / "seq"
  # Written out of order: the reader must sort by name, not trust the directory order.
  for name, value in (("00010", 3), ("00002", 2), ("00001", 1)):
    davis_format.write_palette_png(seq_dir / f"{name}.png", np.full((2, 3), value, np.uint8))
  names, ids = davis_format.read_davis_sequence(seq_dir)
  assert names == ["00001", "00002", "00010"]
  np.testing.assert_array_equal(ids[:, 0, 0], [1, 2, 3])
  davis_format.write_palette_png(seq_dir / "00011.png", np.zeros((3, 3), np.uint8))
  with pytest.raises(ValueError, match="00011.png is 3x3 but 00001.png is 3x2"):
    davis_format.read_davis_sequence(seq_dir)


def test_read_davis_sequence_empty_or_missing(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no PNG"):
    davis_format.read_davis_sequence(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    davis_format.read_davis_sequence(tmp_path / "missing")
