"""DAVIS-format instance-id PNGs: the palette, readers and writers.

A DAVIS sequence is a folder of single-channel PNGs named `{frame:05d}.png`, one per frame, whose
pixel values are object ids (0 = background, 1..n = objects, 255 = void in ground truth). The
official files are palette ('P') PNGs that use the PASCAL VOC colour map, so a viewer shows each id
in a distinct colour while a reader gets the ids back as the palette indices.

Layouts written here (docs/contracts.md §4.1):
  results:      PRED_ROOT/SEQ/00000.png, 00001.png, ...
  ground truth: ROOT/Annotations_unsupervised/480p/SEQ/00000.png, ...  (or Annotations/480p)
                ROOT/ImageSets/2017/<split>.txt  (one sequence name a line, sorted)
"""
from __future__ import annotations

import os
import tempfile
import numpy as np
from PIL import Image

__all__ = [
    "ANNOTATION_FOLDERS",
    "DAVIS_PALETTE",
    "IMAGESETS_YEAR",
    "RESOLUTION",
    "frame_filename",
    "list_frames",
    "read_davis_sequence",
    "read_id_png",
    "write_davis_groundtruth",
    "write_davis_results",
    "write_palette_png",
]

# The unsupervised annotations come first: a root holding both is evaluated on them.
ANNOTATION_FOLDERS = ("Annotations_unsupervised", "Annotations")
RESOLUTION = "480p"
IMAGESETS_YEAR = "2017"

# Modes whose pixel values are the ids themselves ('1' is a binary mask: ids 0/1).
_ID_MODES = ("P", "L", "1")


def _voc_palette() -> np.ndarray:
  """The PASCAL VOC colour map that the DAVIS annotations use.

  Returns:
    uint8 [256, 3] RGB colours; id 0 is black, 1 is (128, 0, 0), 255 is (224, 224, 192).
  """
  ids = np.arange(256, dtype=np.int64)
  palette = np.zeros((256, 3), dtype=np.int64)
  # Bits of the id are dealt round-robin to R, G, B, most significant colour bit first, so
  # small ids get well separated colours.
  for level in range(8):
    for channel in range(3):
      bit = (ids >> (3 * level + channel)) & 1
      palette[:, channel] |= bit << (7 - level)
  return palette.astype(np.uint8)


DAVIS_PALETTE = _voc_palette()
DAVIS_PALETTE.setflags(write=False)


def frame_filename(index: int) -> str:
  """DAVIS frame file name: 0 -> '00000.png'."""
  return f"{index:05d}.png"


def _as_id_array(ids: np.ndarray, ndim: int, what: str) -> np.ndarray:
  """Checks that `ids` holds integer ids in 0..255 and returns them as uint8.

  Args:
    ids: array-like of bool or integer ids with `ndim` dimensions.
    ndim: 2 for one frame [H, W], 3 for a sequence [T, H, W].
    what: how errors name the input.

  Returns:
    uint8 array of the same shape.
  """
  arr = np.asarray(ids)
  axes = "[H, W]" if ndim == 2 else "[T, H, W]"
  if arr.ndim != ndim:
    raise ValueError(f"{what} has shape {arr.shape}; it must be a {ndim}-D id map {axes}")
  if ndim == 3 and arr.shape[0] == 0:
    raise ValueError(f"{what} has no frames (shape {arr.shape}); pass at least one frame")
  if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(
        f"{what} has dtype {arr.dtype}; instance ids must be integers (cast with "
        f".astype(np.uint8) after rounding)")
  if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
    raise ValueError(
        f"{what} holds ids in {int(arr.min())}..{int(arr.max())}; a DAVIS PNG stores ids 0..255 "
        f"(0 = background, 255 = void): renumber the objects 1..n")
  return arr.astype(np.uint8)


def write_palette_png(path: str | os.PathLike, ids: np.ndarray) -> None:
  """Writes an id map as a palette PNG with the DAVIS colours.

  Args:
    path: file to write; missing parent folders are created.
    ids: bool or integer [H, W] ids in 0..255; each pixel's id becomes its palette index, so
      `read_id_png` returns exactly these values.
  """
  arr = _as_id_array(ids, 2, f"ids for {os.fspath(path)}")
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  image = Image.fromarray(arr)
  # putpalette turns the 'L' image into a 'P' image without touching the pixel values.
  image.putpalette(DAVIS_PALETTE.tobytes())
  image.save(path, format="PNG")


def read_id_png(path: str | os.PathLike) -> np.ndarray:
  """Reads a DAVIS id PNG.

  Args:
    path: a palette ('P'), grayscale ('L') or 1-bit ('1') PNG whose pixel values (palette
      indices for 'P') are object ids.

  Returns:
    uint8 [H, W] ids.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the image has colour or extra channels (RGB, RGBA, LA, PA) or 16-bit values, so
      its pixels are not ids.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: expected a palette or grayscale PNG of ids")
  with Image.open(path) as image:
    mode = image.mode
    if mode not in _ID_MODES:
      raise ValueError(
          f"{path} is a {mode!r} image, but DAVIS id maps are single-channel PNGs whose values "
          f"(palette indices) are object ids: save the ids with "
          f"pix2seq_d_jax.formats.davis_format.write_palette_png(path, ids) or "
          f"Image.fromarray(ids.astype(np.uint8)).save(path); for colour-coded masks, map each "
          f"colour to its object id first")
    ids = np.array(image)
  return ids.astype(np.uint8)


def _check_sequence_name(seq: str) -> None:
  if (not isinstance(seq, str) or not seq or seq in (".", "..")
      or any(c in seq for c in "/\\") or any(c.isspace() for c in seq)):
    raise ValueError(
        f"sequence name {seq!r} cannot be a DAVIS folder and ImageSets entry: use a non-empty "
        f"name without slashes or whitespace, e.g. 'bike-packing'")


def _write_sequence(seq_dir: str, id_maps: np.ndarray, what: str) -> list[str]:
  """Writes `id_maps` [T, H, W] as seq_dir/00000.png, ... and returns the paths."""
  maps = _as_id_array(id_maps, 3, what)
  names = [frame_filename(t) for t in range(maps.shape[0])]
  if os.path.isdir(seq_dir):
    # A frame left over from an earlier, longer write would be read back as part of the sequence.
    stale = sorted(n for n in os.listdir(seq_dir) if n.endswith(".png") and n not in names)
    if stale:
      raise ValueError(
          f"{seq_dir} already holds {stale[0]} (and {len(stale) - 1} more PNGs) that this write "
          f"of {len(names)} frames would not replace: write into an empty folder or delete "
          f"{seq_dir} first")
  os.makedirs(seq_dir, exist_ok=True)
  paths = []
  for name, frame in zip(names, maps):
    path = os.path.join(seq_dir, name)
    write_palette_png(path, frame)
    paths.append(path)
  return paths


def write_davis_results(pred_root: str | os.PathLike, seq: str,
                        id_maps: np.ndarray) -> list[str]:
  """Writes one sequence of predictions in the DAVIS results layout.

  Args:
    pred_root: results root; frames go to `pred_root/seq/00000.png`, ...
    seq: sequence name, e.g. 'bike-packing'.
    id_maps: bool or integer [T, H, W] predicted instance ids in 0..255 (0 = background) at the
      annotation resolution. The unsupervised protocol scores ids 1..20 only.

  Returns:
    The written paths in frame order.
  """
  _check_sequence_name(seq)
  seq_dir = os.path.join(os.fspath(pred_root), seq)
  return _write_sequence(seq_dir, id_maps, f"predictions for sequence {seq!r}")


def _add_to_imageset(root: str, split: str, seq: str) -> str:
  """Adds `seq` to root/ImageSets/2017/<split>.txt, keeping the list sorted and unique."""
  folder = os.path.join(root, "ImageSets", IMAGESETS_YEAR)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"{split}.txt")
  names = set()
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      names = {line.strip() for line in f if line.strip()}
  if seq in names:
    return path
  names.add(seq)
  # Replace the file in one step so a reader never sees a half-written list.
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{split}.", suffix=".txt")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    f.write("".join(f"{name}\n" for name in sorted(names)))
  os.replace(tmp, path)
  return path


def write_davis_groundtruth(root: str | os.PathLike, seq: str, id_maps: np.ndarray,
                            split: str = "val",
                            annotations: str = "Annotations_unsupervised") -> list[str]:
  """Writes one ground-truth sequence into a DAVIS root and lists it in the split file.

  Args:
    root: DAVIS root; frames go to `root/<annotations>/480p/seq/00000.png`, ...
    seq: sequence name, e.g. 'bike-packing'.
    id_maps: bool or integer [T, H, W] object ids in 0..255 (0 = background, 255 = void). The
      evaluator takes the number of objects from the first frame.
    split: split file to update, `root/ImageSets/2017/<split>.txt`; the name is added once and
      the file stays sorted, so writing the same sequence again changes nothing there.
    annotations: 'Annotations_unsupervised' (unsupervised task) or 'Annotations'.

  Returns:
    The written frame paths in frame order.
  """
  _check_sequence_name(seq)
  if annotations not in ANNOTATION_FOLDERS:
    raise ValueError(f"annotations={annotations!r} is not a DAVIS annotation folder; use one of "
                     f"{list(ANNOTATION_FOLDERS)}")
  if not split or any(c in split for c in "/\\") or any(c.isspace() for c in split):
    raise ValueError(f"split={split!r} cannot name ImageSets/{IMAGESETS_YEAR}/<split>.txt: use "
                     f"e.g. 'val' or 'train'")
  root = os.fspath(root)
  seq_dir = os.path.join(root, annotations, RESOLUTION, seq)
  paths = _write_sequence(seq_dir, id_maps, f"ground truth for sequence {seq!r}")
  _add_to_imageset(root, split, seq)
  return paths


def list_frames(seq_dir: str | os.PathLike) -> list[str]:
  """Frame names (file names without '.png') of a DAVIS sequence folder, sorted by name.

  Hidden files are skipped, as a shell glob `*.png` would.
  """
  seq_dir = os.fspath(seq_dir)
  if not os.path.isdir(seq_dir):
    raise FileNotFoundError(f"{seq_dir} is not a folder: expected a DAVIS sequence folder of "
                            f"PNGs (00000.png, 00001.png, ...)")
  return sorted(n[:-len(".png")] for n in os.listdir(seq_dir)
                if n.endswith(".png") and not n.startswith("."))


def read_davis_sequence(seq_dir: str | os.PathLike) -> tuple[list[str], np.ndarray]:
  """Reads every PNG of a DAVIS sequence folder.

  Args:
    seq_dir: folder of id PNGs (e.g. `Annotations_unsupervised/480p/bike-packing`).

  Returns:
    (names, ids): the frame names without '.png', sorted by name (never directory order), and
    uint8 [T, H, W] ids in that order.
  """
  seq_dir = os.fspath(seq_dir)
  names = list_frames(seq_dir)
  if not names:
    raise FileNotFoundError(f"{seq_dir} holds no PNG frames: a DAVIS sequence folder holds "
                            f"00000.png, 00001.png, ...")
  frames = []
  for name in names:
    frame = read_id_png(os.path.join(seq_dir, f"{name}.png"))
    if frames and frame.shape != frames[0].shape:
      raise ValueError(
          f"{os.path.join(seq_dir, name + '.png')} is {frame.shape[1]}x{frame.shape[0]} but "
          f"{names[0]}.png is {frames[0].shape[1]}x{frames[0].shape[0]}: every frame of a "
          f"sequence must have the same size")
    frames.append(frame)
  return names, np.stack(frames)

