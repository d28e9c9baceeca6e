"""Tests of the COCO panoptic format: id coding, maps → segments, writing and reading folders."""

import json

import numpy as np
import pytest
from PIL import Image

from pix2seq_d_jax.formats import coco_format as cf

CATS = [
    {'id': 1, 'name': 'person', 'isthing': 1},
    {'id': 3, 'name': 'car', 'isthing': 1},
    {'id': 7, 'name': 'road', 'isthing': 0},
    {'id': 9, 'name': 'sky', 'isthing': 0},
]
PERSON, CAR, ROAD, SKY = 1, 2, 3, 4  # contiguous class index + 1


def test_rgb2id_id2rgb_round_trip_and_formula():
  ids = np.array([[0, 1, 255, 256], [65535, 65536, 1234567, cf.MAX_SEGMENT_ID]])
  rgb = cf.id2rgb(ids)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
  assert rgb[1, 2].tolist() == [1234567 % 256, 1234567 // 256 % 256, 1234567 // 65536]
  back = cf.rgb2id(rgb)
  assert back.dtype == np.int32
  np.testing.assert_array_equal(back, ids)


def test_id2rgb_rejects_ids_that_do_not_fit():
  with pytest.raises(cf.PanopticFormatError, match='0..16777215'):
    cf.id2rgb(np.array([[cf.MAX_SEGMENT_ID + 1]]))
  with pytest.raises(cf.PanopticFormatError, match='integer'):
    cf.id2rgb(np.zeros((2, 2), np.float32))


def test_segments_from_maps_merges_stuff_and_splits_things():
  cls = np.array([
      [ROAD, ROAD, PERSON, PERSON, 0],
      [ROAD, ROAD, PERSON, CAR, 0],
      [SKY, PERSON, PERSON, CAR, CAR],
  ])
  ids = np.array([
      [5, 6, 2, 2, 9],
      [7, 5, 2, 4, 9],
      [1, 3, 3, 4, 8],
  ])
  seg, info = cf.segments_from_maps(cls, ids, CATS)
  assert seg.dtype == np.int32
  # Order: person id 2, person id 3, car id 4, car id 8, road, sky.
  assert [s['category_id'] for s in info] == [1, 1, 3, 3, 7, 9]
  assert [s['id'] for s in info] == [1, 2, 3, 4, 5, 6]
  expected = np.array([
      [5, 5, 1, 1, 0],
      [5, 5, 1, 3, 0],
      [6, 2, 2, 3, 4],
  ])
  np.testing.assert_array_equal(seg, expected)
  by_id = {s['id']: s for s in info}
  # Four road pixels with four different ids are one segment.
  assert by_id[5]['area'] == 4 and by_id[5]['bbox'] == [0, 0, 2, 2]
  assert by_id[1]['area'] == 3 and by_id[1]['bbox'] == [2, 0, 2, 2]
  assert by_id[2]['bbox'] == [1, 2, 2, 1]
  assert by_id[3]['area'] == 2 and by_id[3]['bbox'] == [3, 1, 1, 2]
  assert all(s['iscrowd'] == 0 for s in info)
  assert sum(s['area'] for s in info) == np.count_nonzero(cls)
  # JSON-serialisable: plain Python ints everywhere.
  json.dumps(info)


def test_segments_from_maps_void_is_decided_by_class_and_thing_id_zero_is_an_instance():
  cls = np.array([[0, 0, PERSON, PERSON]])
  ids = np.array([[3, 0, 0, 1]])
  seg, info = cf.segments_from_maps(cls, ids, CATS)
  np.testing.assert_array_equal(seg, [[0, 0, 1, 2]])
  assert [(s['category_id'], s['area']) for s in info] == [(1, 1), (1, 1)]


def test_segments_from_maps_crowd_flag():
  cls = np.array([[CAR, CAR, CAR, CAR, ROAD, ROAD]])
  ids = np.array([[1, 1, 2, 2, 1, 1]])
  crowd = np.array([[True, False, True, True, False, True]])
  seg, info = cf.segments_from_maps(cls, ids, CATS, crowd)
  got = sorted((s['category_id'], s['iscrowd'], s['area']) for s in info)
  # car id 1 splits into a crowd and a non-crowd part; car id 2 is all crowd; road likewise.
  assert got == [(3, 0, 1), (3, 1, 1), (3, 1, 2), (7, 0, 1), (7, 1, 1)]
  crowd_ids = {s['id'] for s in info if s['iscrowd']}
  np.testing.assert_array_equal(np.isin(seg, list(crowd_ids)), crowd)


def test_segments_from_maps_is_deterministic():
  rng = np.random.default_rng(0)
  cls = rng.integers(0, 5, (20, 30))
  ids = rng.integers(0, 6, (20, 30))
  a = cf.segments_from_maps(cls, ids, CATS)
  b = cf.segments_from_maps(cls.astype(np.int64), ids.astype(np.uint8), CATS)
  np.testing.assert_array_equal(a[0], b[0])
  assert a[1] == b[1]


def test_segments_from_maps_large_ids_take_the_sorting_path():
  cls = np.array([[PERSON, PERSON, CAR]])
  ids = np.array([[10**9, 5, 10**9]])
  seg, info = cf.segments_from_maps(cls, ids, CATS)
  np.testing.assert_array_equal(seg, [[2, 1, 3]])
  assert [s['category_id'] for s in info] == [1, 1, 3]


def test_segments_from_maps_errors_name_the_input():
  with pytest.raises(cf.PanopticFormatError, match=r'class_map: values must lie in 0\.\.4'):
    cf.segments_from_maps(np.array([[5]]), np.array([[1]]), CATS)
  with pytest.raises(cf.PanopticFormatError, match='id_map has shape'):
    cf.segments_from_maps(np.zeros((2, 2), int), np.zeros((2, 3), int), CATS)
  with pytest.raises(cf.PanopticFormatError, match='crowd_map'):
    cf.segments_from_maps(np.zeros((2, 2), int), np.zeros((2, 2), int), CATS, np.zeros((3, 2)))
  with pytest.raises(cf.PanopticFormatError, match='integer'):
    cf.segments_from_maps(np.zeros((2, 2)), np.zeros((2, 2), int), CATS)
  with pytest.raises(cf.PanopticFormatError, match="has no 'isthing'"):
    cf.segments_from_maps(np.zeros((2, 2), int), np.zeros((2, 2), int), [{'id': 1, 'name': 'a'}])
  with pytest.raises(cf.PanopticFormatError, match='appears twice'):
    cf.check_categories(CATS + [{'id': 1, 'name': 'other', 'isthing': 0}])


def _two_images():
  rng = np.random.default_rng(1)
  out = []
  for k in range(2):
    cls = rng.integers(0, 5, (12, 16))
    ids = rng.integers(1, 4, (12, 16))
    crowd = rng.random((12, 16)) < 0.1
    out.append(cf.segments_from_maps(cls, ids, CATS, crowd))
  return out


def test_writer_and_loader_round_trip(tmp_path):
  images = _two_images()
  with cf.CocoPanopticWriter(tmp_path / 'out', CATS) as writer:
    for k, (seg, info) in enumerate(images):
      writer.add(100 + k, f'dir/img_{k}.jpg', seg, info)
    # PNGs exist before close, the JSON does not.
    assert (tmp_path / 'out/panoptic/img_0.png').exists()
    assert not (tmp_path / 'out/panoptic.json').exists()
  assert not list((tmp_path / 'out').rglob('*.tmp'))

  data, folder = cf.load_coco_panoptic(tmp_path / 'out/panoptic.json',
                                       tmp_path / 'out/panoptic')
  assert data['categories'] == CATS
  assert data['images'] == [
      {'id': 100, 'file_name': 'dir/img_0.jpg', 'height': 12, 'width': 16},
      {'id': 101, 'file_name': 'dir/img_1.jpg', 'height': 12, 'width': 16},
  ]
  assert [a['file_name'] for a in data['annotations']] == ['img_0.png', 'img_1.png']
  assert len(folder) == 2
  for (ann, seg), (seg_in, info_in) in zip(folder, images):
    np.testing.assert_array_equal(seg, seg_in)
    assert ann['segments_info'] == info_in
    png_ids = set(np.unique(seg).tolist()) - {0}
    assert png_ids == {s['id'] for s in ann['segments_info']}
    for s in ann['segments_info']:
      assert s['area'] == int((seg == s['id']).sum())
  with Image.open(tmp_path / 'out/panoptic/img_1.png') as im:
    assert im.mode == 'RGB'
  assert folder.by_image_id[101]['file_name'] == 'img_1.png'


def test_writer_sets_area_from_pixels_and_defaults_iscrowd(tmp_path):
  seg = np.array([[0, 5, 5], [5, 9, 9]])
  writer = cf.CocoPanopticWriter(tmp_path, CATS)
  writer.add(1, 'a.png', seg, [{'id': 5, 'category_id': 7, 'area': 999},
                               {'id': 9, 'category_id': 1}])
  path = writer.close()
  ann = json.loads(path.read_text())['annotations'][0]
  assert ann['segments_info'] == [{'id': 5, 'category_id': 7, 'area': 3, 'iscrowd': 0},
                                  {'id': 9, 'category_id': 1, 'iscrowd': 0, 'area': 2}]
  with pytest.raises(RuntimeError, match='closed'):
    writer.add(2, 'b.png', seg, [])


def test_writer_does_not_write_json_when_the_block_fails(tmp_path):
  seg, info = _two_images()[0]
  with pytest.raises(KeyError):
    with cf.CocoPanopticWriter(tmp_path, CATS) as writer:
      writer.add(1, 'a.jpg', seg, info)
      raise KeyError('boom')
  assert not (tmp_path / 'panoptic.json').exists()


def test_writer_validates(tmp_path):
  seg, info = _two_images()[0]
  writer = cf.CocoPanopticWriter(tmp_path, CATS)
  writer.add(1, 'a.jpg', seg, info)
  with pytest.raises(cf.PanopticFormatError, match='image id 1 was added twice'):
    writer.add(1, 'other.jpg', seg, info)
  with pytest.raises(cf.PanopticFormatError, match='both map to a.png'):
    writer.add(2, 'x/a.png', seg, info)
  with pytest.raises(cf.PanopticFormatError, match='seg_map is 12x16 but the image is 24x32'):
    writer.add(3, 'c.jpg', seg, info, height=24, width=32)
  with pytest.raises(cf.PanopticFormatError,
                     match=r'segment \d+ of image 4 \(d.jpg\) has category 2, which is not in '
                     r'categories \(valid: 1, 3, 7, 9\)'):
    writer.add(4, 'd.jpg', seg, [dict(s, category_id=2) if k == 0 else s
                                 for k, s in enumerate(info)])
  with pytest.raises(cf.PanopticFormatError, match='in its PNG but not in segments_info'):
    writer.add(5, 'e.jpg', seg, info[1:])


def test_index_segments_checks():
  seg = np.array([[0, 1, 2], [2, 2, 1]])
  good = [{'id': 2, 'category_id': 7}, {'id': 1, 'category_id': 1}]
  ids, index, counts = cf.index_segments(seg, good, {1, 7}, source='s', image='i')
  assert ids.tolist() == [0, 2, 1]
  np.testing.assert_array_equal(ids[index], seg)
  assert counts.tolist() == [1, 3, 2]

  def err(info, **kw):
    with pytest.raises(cf.PanopticFormatError) as e:
      cf.index_segments(seg, info, {1, 7}, source='pred.json', image='42 (x.png)', **kw)
    return str(e.value)

  assert 'segment id(s) 2 in its PNG but not in segments_info' in err(good[1:])
  msg = err(good + [{'id': 3, 'category_id': 1}])
  assert msg.startswith('pred.json: image 42 (x.png) lists segment id(s) 3')
  assert 'twice' in err(good + [{'id': 2, 'category_id': 7}])
  msg = err([{'id': 0, 'category_id': 1}] + good)
  assert 'entry 0 of segments_info of image 42 (x.png) has id 0' in msg and '0 is VOID' in msg
  msg = err([{'id': 2, 'category_id': 999}, good[1]])
  assert msg == ('pred.json: segment 2 of image 42 (x.png) has category 999, which is not in '
                 'categories (valid: 1, 7)')
  assert 'iscrowd' in err([dict(good[0], iscrowd=2), good[1]])
  # Ground truth may list segments without pixels.
  cf.index_segments(seg, good + [{'id': 3, 'category_id': 1}], {1, 7}, source='s', image='i',
                    require_all_painted=False)


def test_describe_ids():
  assert cf.describe_ids(range(1, 134)) == '1..133'
  assert cf.describe_ids([3, 1]) == '1, 3'
  assert cf.describe_ids(list(range(0, 100, 2))).endswith('(50 ids)')


def _write_one(tmp_path):
  seg, info = _two_images()[0]
  with cf.CocoPanopticWriter(tmp_path / 'gt', CATS) as w:
    w.add(7, 'im7.jpg', seg, info)
  return tmp_path / 'gt/panoptic.json', tmp_path / 'gt/panoptic'


def test_loader_errors_name_file_and_fix(tmp_path):
  json_path, png_dir = _write_one(tmp_path)
  _, folder = cf.load_coco_panoptic(json_path, png_dir)
  (png_dir / 'im7.png').unlink()
  with pytest.raises(cf.PanopticFormatError, match=r'image 7: PNG .*im7.png does not exist'):
    list(folder)

  with pytest.raises(cf.PanopticFormatError, match='no such folder'):
    cf.load_coco_panoptic(json_path, tmp_path / 'nope')
  with pytest.raises(cf.PanopticFormatError, match='no such file'):
    cf.load_coco_panoptic(tmp_path / 'missing.json', png_dir)

  bad = tmp_path / 'bad.json'
  bad.write_text('{"annotations": [')
  with pytest.raises(cf.PanopticFormatError, match='bad.json: not valid JSON'):
    cf.load_coco_panoptic(bad, png_dir)

  data = json.loads(json_path.read_text())
  del data['annotations'][0]['segments_info']
  bad.write_text(json.dumps(data))
  with pytest.raises(cf.PanopticFormatError, match="annotation 0 \\(image 7\\) has no "
                     "'segments_info'"):
    cf.load_coco_panoptic(bad, png_dir)

  data = json.loads(json_path.read_text())
  data['annotations'][0]['file_name'] = None
  bad.write_text(json.dumps(data))
  with pytest.raises(cf.PanopticFormatError, match="image 7 has file_name None; give the PNG"):
    cf.load_coco_panoptic(bad, png_dir)

  data = json.loads(json_path.read_text())
  data['annotations'].append(dict(data['annotations'][0]))
  bad.write_text(json.dumps(data))
  with pytest.raises(cf.PanopticFormatError, match='image 7 has more than one annotation'):
    cf.load_coco_panoptic(bad, png_dir)

  data = json.loads(json_path.read_text())
  del data['categories']
  bad.write_text(json.dumps(data))
  with pytest.raises(cf.PanopticFormatError, match="no 'categories'"):
    cf.load_coco_panoptic(bad, png_dir)
  cf.load_coco_panoptic(bad, png_dir, require_categories=False)


def test_loader_rejects_non_rgb_png(tmp_path):
  json_path, png_dir = _write_one(tmp_path)
  Image.fromarray(np.zeros((12, 16), np.uint8)).save(png_dir / 'im7.png')
  _, folder = cf.load_coco_panoptic(json_path, png_dir)
  with pytest.raises(cf.PanopticFormatError, match='has mode L; panoptic PNGs must be RGB'):
    list(folder)
  (png_dir / 'im7.png').write_bytes(b'not a png')
  with pytest.raises(cf.PanopticFormatError, match='cannot read PNG'):
    list(folder)
