"""Sampler and config validation: bad `steps` / `td` and inconsistent video frame counts are
errors naming the key and the fix, raised before anything is compiled or trained."""

import numpy as np
import pytest

from conftest import REPO, TINY_OVERRIDES
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import eval_panoptic
from pix2seq_d_jax import eval_vos
from pix2seq_d_jax import predict
from pix2seq_d_jax import predict_video
from pix2seq_d_jax import sampling
from pix2seq_d_jax import train

BAD_STEPS = (0, -3, 2.0, True, None)
BAD_TD = (-0.5, -1.0, -2.0, float('nan'), float('inf'), 'one')


def _video_config(*overrides):
  return config_lib.load_config(str(REPO / 'configs' / 'moving_shapes.py'),
                                list(TINY_OVERRIDES) + list(overrides))


@pytest.mark.parametrize('steps', BAD_STEPS)
def test_bad_steps_name_the_key(steps):
  with pytest.raises(ValueError, match=r'my\.steps=.*integer >= 1.*set my\.steps'):
    sampling.check_sampler_args(steps, 1.0, steps_key='my.steps')


@pytest.mark.parametrize('td', BAD_TD)
def test_bad_td_names_the_key(td):
  with pytest.raises(ValueError, match=r'my\.td=.*finite number >= 0.*set my\.td'):
    sampling.check_sampler_args(4, td, td_key='my.td')


@pytest.mark.parametrize('steps,td', [(1, 0.0), (1, 1.0), (20, 1.0), (3, 7.5), (np.int64(5), 0)])
def test_valid_settings_pass(steps, td):
  sampling.check_sampler_args(steps, td)


def test_sample_refuses_zero_steps_and_negative_td():
  """`sampling.sample` checks before it builds anything (no model is needed to get the error)."""
  with pytest.raises(ValueError, match='steps=0'):
    sampling.sample(None, None, None, None, 1.0, model=None, settings=None, steps=0)
  with pytest.raises(ValueError, match=r'td=-1\.5'):
    sampling.sample(None, None, None, None, -1.5, model=None, settings=None, steps=2)


def test_predictor_names_the_argument_or_the_config_key(tiny_config):
  images = np.zeros((1, 32, 32, 3), np.uint8)
  p = predict.Predictor(tiny_config(), variables=None)
  with pytest.raises(ValueError, match=r'Predictor: steps=0'):
    p(images, steps=0)
  with pytest.raises(ValueError, match=r'Predictor: td=-0\.5'):
    p(images, td=-0.5)
  p = predict.Predictor(tiny_config('eval.td=-2.0'), variables=None)
  with pytest.raises(ValueError, match=r'Predictor: config\.eval\.td=-2\.0.*set config\.eval\.td'):
    p(images)


def test_video_predictor_checks_steps_steps_later_and_td():
  p = predict_video.VideoPredictor(_video_config(), variables=None)
  clip = np.zeros((1, 2, 32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match=r'VideoPredictor: steps=0'):
    p(clip, steps=0)
  with pytest.raises(ValueError, match=r'VideoPredictor: steps_later=0'):
    p.start(1, steps_later=0)
  with pytest.raises(ValueError, match=r'VideoPredictor: td=-1\.0'):
    p.start(1, td=-1.0)
  p = predict_video.VideoPredictor(_video_config('eval.steps_later=0'), variables=None)
  with pytest.raises(ValueError, match=r'VideoPredictor: config\.eval\.steps_later=0'):
    p(clip)
  with pytest.raises(ValueError, match='steps_later=0'):
    predict_video.sample_frame(None, None, None, 0, None, None, 1.0, model=None,
                               settings=sampling.SampleSettings.from_config(_video_config()),
                               steps_first=2, steps_later=0)


def test_evaluation_checks_its_overrides_and_config():
  """The evaluators check before they read any data (source, model and mesh are not needed)."""
  with pytest.raises(ValueError, match=r'^td=-1'):
    eval_panoptic.evaluate_panoptic(_video_config(), None, None, None, None, '/nonexistent',
                                    step=0, td=-1.0)
  with pytest.raises(ValueError, match=r'config\.eval\.steps=0'):
    eval_panoptic.evaluate_panoptic(_video_config('eval.steps=0'), None, None, None, None,
                                    '/nonexistent', step=0)
  with pytest.raises(ValueError, match=r'config\.eval\.steps_later=0'):
    eval_vos.evaluate_video(_video_config('eval.steps_later=0'), None, None, None, None,
                            '/nonexistent', step=0)


@pytest.mark.parametrize('override,match', [
    ('eval.steps=0', r'config\.eval\.steps=0'),
    ('eval.td=-1.0', r'config\.eval\.td=-1\.0'),
])
def test_training_start_up_refuses_bad_eval_settings(tiny_config, tmp_path, override, match):
  """At start-up, before a checkpoint folder exists (not at the first evaluation)."""
  with pytest.raises(ValueError, match=match):
    train.Trainer(tiny_config(override), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('overrides,match', [
    (('dataset.num_frames=2',), r'num_frames=2 but config\.model\.num_cond_frames=2.*'
                                r'set config\.model\.num_cond_frames=1 or '
                                r'config\.dataset\.num_frames=3'),
    (('model.num_cond_frames=0',), r'num_frames=3 but config\.model\.num_cond_frames=0'),
    (('dataset.num_frames=4', 'model.num_cond_frames=1'), r'num_frames=4 .*num_cond_frames=1'),
])
def test_video_frame_counts_must_agree(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train.Trainer(_video_config(*overrides), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_image_data_with_previous_frames_is_an_error(tiny_config, tmp_path):
  with pytest.raises(ValueError, match=r'num_cond_frames=2 .*image data set.*'
                                       r'set config\.model\.num_cond_frames=0'):
    train.Trainer(tiny_config('model.num_cond_frames=2'), str(tmp_path / 'w'))


def test_consistent_video_and_image_configs_pass(tiny_config):
  train.check_frames(_video_config(), True)
  train.check_frames(_video_config('dataset.num_frames=2', 'model.num_cond_frames=1'), True)
  train.check_frames(tiny_config(), False)
  sampling.EvalOptions.from_config(_video_config())
  sampling.EvalOptions.from_config(tiny_config())
