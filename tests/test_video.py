"""Tests for video inference and evaluation: pix2seq_d_jax.predict_video (streaming sampler,
VideoPredictor) and pix2seq_d_jax.eval_vos (DAVIS export and J&F)."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO, TINY_OVERRIDES, inlined_count
from pix2seq_d_jax import bits as bits_lib
from pix2seq_d_jax import checkpoint
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import eval_vos
from pix2seq_d_jax import predict_video
from pix2seq_d_jax import sampling
from pix2seq_d_jax import sharding
from pix2seq_d_jax import state as state_lib
from pix2seq_d_jax import warm_start
from pix2seq_d_jax.data import sources
from pix2seq_d_jax.evaluation import vos
from pix2seq_d_jax.formats import davis_format
from pix2seq_d_jax.models import pix2seq_d


def _video_config(*overrides):
  """configs/moving_shapes.py with the tiny model of conftest (32x32 images, 16x16 masks)."""
  return config_lib.load_config(str(REPO / 'configs' / 'moving_shapes.py'),
                                list(TINY_OVERRIDES) + list(overrides))


@pytest.fixture(scope='module')
def tiny_video(random_variables):
  config = _video_config()
  model = pix2seq_d.build_model(config)
  return config, model, random_variables(model, config, seed=3)


# ---------------------------------------------------------------------------------------------
# Panoptic clips -> DAVIS ids.


def test_ground_truth_objects_are_things_by_first_appearance():
  """Stuff and void become 0, crowd 255; thing ids are renumbered 1..n by first appearance (an
  object that enters later gets a larger id than every object of frame 0)."""
  stuff = np.array([5, 6])
  label = np.zeros((2, 3, 4, 3), np.int32)
  label[..., 0], label[..., 1] = 5, 9          # stuff region (class 5, id 9)
  label[0, 0, 0] = (0, 0, 0)                   # void
  label[:, 2, 3] = (2, 7, 0)                   # thing id 7, raster-first in frame 0: row 2
  label[:, 1, 1] = (1, 3, 0)                   # thing id 3 appears at row 1: first
  label[1, 0, 2] = (4, 1, 0)                   # thing id 1 enters in frame 1
  label[1, 2, 0] = (3, 4, 1)                   # crowd
  out = eval_vos.davis_ground_truth(label, stuff)
  expected = np.zeros((2, 3, 4), np.uint8)
  expected[:, 1, 1] = 1
  expected[:, 2, 3] = 2
  expected[1, 0, 2] = 3
  expected[1, 2, 0] = 255
  np.testing.assert_array_equal(out, expected)


def test_predictions_map_stuff_to_background_and_keep_20_largest():
  """A predicted id whose class is stuff is background; with 25 object ids only the 20 largest
  survive, renumbered 1..20, and the evaluator accepts them."""
  stuff = np.array([5])
  row = np.concatenate([np.repeat(np.arange(1, 26), np.arange(1, 26)), np.full(40, 26)])
  ids = np.tile(row, (2, 3, 1))                # id k has k pixels per row; id 26 the most
  cls = np.where(ids == 26, 5, 1)              # id 26 is stuff
  out = eval_vos.davis_predictions(cls, ids, stuff)
  assert out.max() == 20 and out.dtype == np.uint8
  assert np.all(out[ids == 26] == 0)
  assert np.all(out[ids <= 5] == 0)            # ids 1..5, the smallest, are dropped
  assert np.all(out[(ids > 5) & (ids <= 25)] > 0)
  assert len(np.unique(out[(ids > 5) & (ids <= 25)])) == 20
  gt = (ids == 25).astype(np.uint8)
  result = vos.VOSEvaluator().add_sequence('s', gt, out)
  assert result['J&F'] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# evaluate_video's writing and scoring path.


def _gt_fn(variables, frames, ids, labels, orig_size, unpadded_size, rng, td, **kwargs):
  """Returns the ground truth as the prediction."""
  del variables, frames, ids, orig_size, unpadded_size, rng, td, kwargs
  return np.asarray(labels)[..., 0], np.asarray(labels)[..., 1]


@pytest.fixture(scope='module')
def eval_setup():
  config = _video_config('dataset.num_eval=5', 'dataset.eval_num_frames=6',
                         'eval.batch_size=2', 'eval.num_visualizations=1')
  source = sources.MovingShapes(config.dataset)
  mesh = sharding.make_mesh(config.mesh)
  return config, source, mesh


def test_ground_truth_against_itself_scores_100(eval_setup, tmp_path):
  """Feeding the ground truth as predictions through evaluate_video gives J&F = J = F = 100,
  recalls 100 and decays 0; every GT frame has a prediction PNG; the files score the same with
  the standalone folder evaluation; the metrics file holds the video keys."""
  config, source, mesh = eval_setup
  out = tmp_path / 'eval'
  metrics, panels = eval_vos.evaluate_video(config, None, source, None, mesh, out, step=7,
                                            fn=_gt_fn)
  for key in ('J&F', 'J_mean', 'F_mean', 'J_recall', 'F_recall'):
    assert metrics[key] == pytest.approx(100.0), key
  assert metrics['J_decay'] == pytest.approx(0.0) and metrics['F_decay'] == pytest.approx(0.0)
  assert metrics['num_sequences'] == 5 and metrics['num_objects'] >= 3
  gt_root = out / 'groundtruth'
  names = (gt_root / 'ImageSets' / '2017' / 'val.txt').read_text().split()
  assert len(names) == 5
  for seq in names:
    gt_frames = davis_format.list_frames(gt_root / 'Annotations_unsupervised' / '480p' / seq)
    assert gt_frames == [f'{t:05d}' for t in range(6)]
    assert davis_format.list_frames(out / 'predictions' / seq) == gt_frames
  again = vos.evaluate_davis_folders(gt_root, out / 'predictions')
  assert again['J&F'] == pytest.approx(100.0)
  saved = json.loads((out / 'metrics.json').read_text())
  assert set(vos.RESULT_KEYS) <= set(saved) and saved['step'] == 7
  assert len(panels) == 1 and (out / 'vis' / f'{names[0]}.gif').exists()


def test_swapped_and_extra_ids_lower_the_score_without_crashing(eval_setup, tmp_path):
  """The path discriminates: swapping two objects' ids from frame 3 on lowers J&F below 100,
  and 40 extra small object ids (over the protocol's 20) are cut to 20 instead of failing."""
  config, source, mesh = eval_setup
  stuff = eval_vos.stuff_classes(source.categories)

  def swapped(*args, **kwargs):
    cls, ids = _gt_fn(*args, **kwargs)
    cls, ids = cls.copy(), ids.copy()
    for b in range(ids.shape[0]):
      things = np.unique(ids[b][~np.isin(cls[b], stuff) & (ids[b] > 0)])
      if len(things) >= 2:
        a, c = things[:2]
        later = ids[b, 3:]
        ids[b, 3:] = np.where(later == a, c, np.where(later == c, a, later))
    return cls, ids

  metrics, _ = eval_vos.evaluate_video(config, None, source, None, mesh, tmp_path / 'a', step=0,
                                       fn=swapped)
  assert metrics['J&F'] < 99.0

  def crowded(*args, **kwargs):
    cls, ids = _gt_fn(*args, **kwargs)
    cls, ids = cls.copy(), ids.copy()
    for k in range(40):                         # 40 one-pixel things with ids 100..139
      cls[:, :, 0, k] = 1
      ids[:, :, 0, k] = 100 + k
    return cls, ids

  metrics, _ = eval_vos.evaluate_video(config, None, source, None, mesh, tmp_path / 'b', step=0,
                                       fn=crowded)
  assert 90.0 < metrics['J&F'] <= 100.0
  pred = davis_format.read_davis_sequence(tmp_path / 'b' / 'predictions' /
                                          _sequence_names(tmp_path / 'b')[0])[1]
  assert pred.max() == 20


def test_frame_strip_layout():
  """render_frame_strip: rows image / ground truth / prediction, one column per frame, at the
  documented offsets; an id keeps its colour across frames."""
  from pix2seq_d_jax.evaluation import visualize  # pylint: disable=g-import-not-at-top
  cats = [{'id': 1, 'name': 'disc', 'isthing': 1}, {'id': 2, 'name': 'sand', 'isthing': 0}]
  frames = np.zeros((3, 8, 8, 3), np.uint8)
  frames[1] = 200
  cls = np.full((3, 8, 8), 2)
  ids = np.full((3, 8, 8), 1)
  cls[:, :4, :4], ids[:, :4, :4] = 1, 5
  strip = visualize.render_frame_strip(frames, cls, ids, cls, ids, cats, scale=2)
  g, t = visualize.GAP, visualize.TITLE_HEIGHT
  x0 = lambda k: visualize.STRIP_LABEL_WIDTH + k * (16 + g)
  assert strip.shape[1] == visualize.STRIP_LABEL_WIDTH + 3 * (16 + g)
  np.testing.assert_array_equal(strip[t + 8, x0(1) + 8], [200, 200, 200])
  thing = visualize.colorize(cls[0], ids[0], cats)[1, 1]
  for k in range(3):
    for row in (1, 2):
      np.testing.assert_array_equal(strip[t + row * (16 + g) + 2, x0(k) + 2], thing)
  np.testing.assert_array_equal(strip[t + 16 + g + 12, x0(2) + 12],
                                visualize.class_colors(cats)[2])


def _sequence_names(root):
  return (root / 'groundtruth' / 'ImageSets' / '2017' / 'val.txt').read_text().split()


def test_gt_condition_grid_matches_training_masks(eval_setup):
  """label_to_mask_grid puts the original-size label on the mask grid as the training transform
  does (no augmentation): same masks as the pipeline's nearest resize of the padded canvas."""
  from pix2seq_d_jax.data import transforms  # pylint: disable=g-import-not-at-top
  label = np.random.default_rng(0).integers(0, 6, (1, 2, 24, 40, 2)).astype(np.int32)
  crowd = np.zeros((1, 2, 24, 40, 1), np.int32)
  crowd[0, 1, :6, :10] = 1
  orig = np.array([[24, 40]], np.int32)
  unpad = np.array(sampling.fit_size((24, 40), (32, 32)), np.int32)[None]
  out = np.asarray(predict_video.label_to_mask_grid(
      jnp.asarray(np.concatenate([label, crowd], -1)), jnp.asarray(orig), jnp.asarray(unpad),
      image_size=(32, 32), mask_size=(16, 16), max_instances=4))
  ref = transforms.train_transform(
      {'image': np.zeros((2, 24, 40, 3), np.uint8), 'label': label[0]}, image_size=(32, 32),
      mask_size=(16, 16), min_scale=1.0, max_scale=1.0, color_jitter_strength=0.0,
      flip_prob=0.0, seed=np.array([0, 0]))['masks'].numpy()
  ref_crowd = transforms.train_transform(
      {'image': np.zeros((2, 24, 40, 3), np.uint8), 'label': np.concatenate(
          [crowd[0], crowd[0]], -1)}, image_size=(32, 32), mask_size=(16, 16), min_scale=1.0,
      max_scale=1.0, color_jitter_strength=0.0, flip_prob=0.0,
      seed=np.array([0, 0]))['masks'].numpy()[..., 0] > 0
  ref = np.where(ref_crowd[..., None], 0, ref)
  ref[..., 1] = np.minimum(ref[..., 1], 3)
  np.testing.assert_array_equal(out[0], ref)
  assert ref_crowd.any()


# ---------------------------------------------------------------------------------------------
# The streaming sampler.


class _CopyModel:
  """A stand-in Pix2SeqD. Its decoder's id is the latest condition frame's id where that is
  non-zero, else one invented from the image (so it changes from frame to frame and an id
  carried over from the previous prediction is told apart from a fresh one); its class is
  floor(9 gamma), which tells the step count of the frame (the sampler returns the last step's
  estimate, made at gamma(1/N))."""
  num_cond_frames = 2
  num_bits = 16

  def apply(self, variables, *args, method, **kwargs):
    del variables
    if method == 'encode':
      frame = args[0]
      fresh = 1 + jnp.floor(frame[:, ::2, ::2, :1] * 14.99)          # ids 1..15, [B, h, w, 1]
      return fresh, jnp.zeros((frame.shape[0], 1, 1))
    _, gamma, enc_cat, _ = args
    latest = kwargs['cond'][..., 16:]                                 # frame t - 1
    ids = jnp.sum((latest[..., 8:] > 0).astype(jnp.int32) << jnp.arange(8), axis=-1)
    ids = jnp.where(ids > 0, ids, enc_cat[..., 0].astype(jnp.int32))
    cls = jnp.broadcast_to(jnp.floor(gamma * 9).astype(jnp.int32)[:, None, None], ids.shape)
    return 40.0 * jax.nn.one_hot(jnp.stack([cls, ids], -1), 256)


def _copy_settings():
  return sampling.SampleSettings(b=0.1, schedule='cosine', loss='softmax_xent', num_classes=9,
                                 max_instances=16, self_condition=False)


def test_condition_carries_the_previous_prediction():
  """With a decoder that copies the latest condition frame, the ids of frame 0 persist through
  the clip although every frame would invent different ids on its own; with GT conditioning
  frame t copies the ground truth of frame t - 1. Frame 0 runs steps_first (2: gamma(1/2) ->
  class 4) and later frames steps_later (3: gamma(1/3) -> class 6)."""
  frames = np.random.default_rng(0).uniform(size=(2, 5, 16, 16, 3)).astype(np.float32)
  run = functools.partial(predict_video.sample_video, None, jnp.asarray(frames), jnp.arange(2),
                          jax.random.PRNGKey(0), 1.0, model=_CopyModel(),
                          settings=_copy_settings(), steps_first=2, steps_later=3)
  masks = np.asarray(run())
  assert masks.shape == (2, 5, 8, 8, 2)
  fresh = 1 + np.floor(frames[:, :, ::2, ::2, 0] * 14.99).astype(np.int32)
  np.testing.assert_array_equal(masks[:, 0, ..., 1], fresh[:, 0])
  assert not np.array_equal(fresh[:, 1], fresh[:, 0])
  for t in range(1, 5):
    np.testing.assert_array_equal(masks[:, t, ..., 1], masks[:, 0, ..., 1])
  assert np.all(masks[:, 0, ..., 0] == 4) and np.all(masks[:, 1:, ..., 0] == 6)
  gt = np.random.default_rng(1).integers(1, 9, (2, 5, 8, 8, 2)).astype(np.int32)
  with_gt = np.asarray(run(gt_cond=jnp.asarray(gt)))
  np.testing.assert_array_equal(with_gt[:, 0, ..., 1], fresh[:, 0])
  np.testing.assert_array_equal(with_gt[:, 1:, ..., 1], gt[:, :-1, ..., 1])


def test_program_holds_the_encoder_once(tiny_video):
  """The clip program is a loop over frames holding one encoder and the decoder once per
  distinct step count: steps_first == steps_later -> one decoder, otherwise two (a cond)."""
  config, model, variables = tiny_video
  settings = sampling.SampleSettings.from_config(config)
  args = (variables, jnp.zeros((1, 3, 32, 32, 3)), jnp.arange(1), jax.random.PRNGKey(0),
          jnp.float32(1.0))
  count = lambda first, later: inlined_count(jax.jit(functools.partial(
      predict_video.sample_video, model=model, settings=settings, steps_first=first,
      steps_later=later)).lower(*args).as_text(), 'stablehlo.convolution')
  _, x_t, gamma, cond = pix2seq_d.init_inputs(config)
  enc = jax.eval_shape(lambda: model.apply(variables, args[1][:, 0], train=False,
                                           method='encode'))
  decoder = inlined_count(jax.jit(lambda v, x, g, e, t, c: model.apply(
      v, x, g, e, t, train=False, cond=c, method='decode')).lower(
          variables, x_t, gamma, jnp.zeros(enc[0].shape), jnp.zeros(enc[1].shape),
          cond).as_text(), 'stablehlo.convolution')
  encoder = inlined_count(jax.jit(lambda v, i: model.apply(
      v, i, train=False, method='encode')).lower(variables, args[1][:, 0]).as_text(),
                           'stablehlo.convolution')
  assert decoder > 0 and encoder > 0
  assert count(3, 3) == encoder + decoder
  assert count(5, 2) == encoder + 2 * decoder


def test_streaming_equals_frame_by_frame_without_retracing(tiny_video, monkeypatch):
  """VideoPredictor on whole clips gives the same maps as start() + step() per frame; the
  per-frame step traces once for the whole stream (and for a restarted stream)."""
  config, _, variables = tiny_video
  traces = []
  real = predict_video.sample_frame

  def counting(*args, **kwargs):
    traces.append(kwargs['steps_later'])
    return real(*args, **kwargs)
  monkeypatch.setattr(predict_video, 'sample_frame', counting)
  predictor = predict_video.VideoPredictor(config, variables)
  clips = np.random.default_rng(2).integers(0, 256, (2, 4, 24, 28, 3)).astype(np.uint8)
  whole = predictor(clips, steps=2, steps_later=1, seed=5, example_ids=[4, 9])
  assert whole['id'].shape == (2, 4, 24, 28) and whole['id'].dtype == np.int32
  assert whole['class'].max() < 9 and whole['id'].max() < 16
  n_clip = len(traces)
  predictor.start(batch=2, steps=2, steps_later=1, seed=5, example_ids=[4, 9])
  for t in range(4):
    out = predictor.step(clips[:, t])
    np.testing.assert_array_equal(out['class'], whole['class'][:, t])
    np.testing.assert_array_equal(out['id'], whole['id'][:, t])
  assert len(traces) == n_clip + 1
  predictor.start(batch=2, steps=2, steps_later=1, seed=5, example_ids=[4, 9])
  np.testing.assert_array_equal(predictor.step(clips[:, 0])['id'], whole['id'][:, 0])
  assert len(traces) == n_clip + 1
  with pytest.raises(ValueError, match='start'):
    predictor.step(clips[:1, 0])


# ---------------------------------------------------------------------------------------------
# Image -> video initialisation (docs/decisions.md §7).


def _filled_state(config, variables):
  abstract = state_lib.abstract_state(config)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  return zeros.replace(params=variables['params'], batch_stats=variables['batch_stats'],
                       ema_params=variables['params'], ema_batch_stats=variables['batch_stats'])


def test_video_model_from_image_checkpoint_starts_as_the_image_model(tiny_config,
                                                                      random_variables, tmp_path):
  """An image checkpoint loaded into the video config: conv_in's new condition channels are
  zero, the decoder's logits with an empty condition equal the image model's, and frame 0 of a
  streamed clip equals the image sampler with the key fold_in(rng, 0)."""
  image_config = tiny_config()
  image_model = pix2seq_d.build_model(image_config)
  image_vars = random_variables(image_model, image_config, seed=2)
  workdir = tmp_path / 'image_run'
  manager = checkpoint.make_manager(workdir, image_config)
  checkpoint.save(manager, _filled_state(image_config, image_vars), {'step': 0})
  manager.wait_until_finished()
  manager.close()
  checkpoint.save_config(workdir, image_config)

  config = _video_config(f'train.init_from={workdir}')
  model = pix2seq_d.build_model(config)
  mesh = sharding.make_mesh(config.mesh)
  abstract = state_lib.abstract_state(config)
  shardings = sharding.state_shardings(abstract, mesh)
  fresh = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), abstract)
  state = warm_start.init_from(fresh, config, shardings)
  variables = state.variables(True)
  kernel = np.asarray(variables['params']['decoder']['conv_in']['kernel'])
  image_kernel = np.asarray(image_vars['params']['decoder']['conv_in']['kernel'])
  assert kernel.shape[2] == image_kernel.shape[2] + 32
  np.testing.assert_array_equal(kernel[:, :, :image_kernel.shape[2]], image_kernel)
  assert np.all(kernel[:, :, image_kernel.shape[2]:] == 0)

  rng = np.random.default_rng(4)
  frames = rng.uniform(size=(2, 3, 32, 32, 3)).astype(np.float32)
  x_t = jnp.asarray(rng.normal(size=(2, 16, 16, 16)), jnp.float32)
  gamma = jnp.array([0.3, 0.8], jnp.float32)
  key, ids = jax.random.PRNGKey(6), jnp.array([11, 12], jnp.int32)
  # Both programs unoptimised: compiles several times faster, same arithmetic on both sides.
  jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})

  @jit
  def image_run(v, frame):
    enc = image_model.apply(v, frame, train=False, method='encode')
    logits = image_model.apply(v, x_t, gamma, *enc, train=False, method='decode')
    masks = sampling.sample(v, frame, ids, jax.random.fold_in(key, 0), 1.0, model=image_model,
                            settings=sampling.SampleSettings.from_config(image_config), steps=3)
    return logits, masks

  @jit
  def video_run(v, clip):
    enc = model.apply(v, clip[:, 0], train=False, method='encode')
    empty = bits_lib.cond_bits(predict_video.empty_history(2, 2, (16, 16)), config.diffusion.b)
    logits = model.apply(v, x_t, gamma, *enc, train=False, method='decode', cond=empty)
    masks = predict_video.sample_video(v, clip, ids, key, 1.0, model=model,
                                       settings=sampling.SampleSettings.from_config(config),
                                       steps_first=3, steps_later=2)
    return logits, masks

  image_logits, image_masks = jax.device_get(image_run(image_vars, frames[:, 0]))
  video_logits, streamed = jax.device_get(video_run(variables, frames))
  np.testing.assert_allclose(video_logits, image_logits, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(streamed[:, 0], image_masks)
  assert len(np.unique(image_masks.reshape(-1, 2), axis=0)) > 1     # a non-degenerate map


def test_config_keys_of_the_video_default():
  """The video configs carry the keys the video code reads, and :runlocal / :long exist."""
  for arg in ('', ':runlocal', ':long'):
    c = config_lib.load_config(str(REPO / 'configs' / f'moving_shapes.py{arg}'))
    assert c.dataset.name == 'moving_shapes' and c.model.num_cond_frames == 2
    assert c.dataset.num_frames == 3 and c.dataset.frames_dropout == 0.2
    assert isinstance(c.eval.use_gt_cond, bool) and c.eval.steps_later >= 1
    assert isinstance(c, ml_collections.ConfigDict)
