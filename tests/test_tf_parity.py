"""Parity with the authors' TensorFlow Pix2Seq-D on their own checkpoints.

The fixtures under tests/data/tf_parity/ were written by tools/make_tf_parity_fixtures.py with
the authors' code (google-research/pix2seq): small models with random weights, saved with
`tf.train.Checkpoint`, and what their code computed for fixed inputs and noise. Here
`pix2seq_d_jax.convert.tf_pix2seq` imports those checkpoints and our model must reproduce every
recorded array within 1e-4 relative error (max |ours - theirs| / max |theirs|, float32), and the
5-step inference must decode to identical masks.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pix2seq_d_jax import bits as bits_lib
from pix2seq_d_jax import config_lib
from pix2seq_d_jax import diffusion
from pix2seq_d_jax import losses
from pix2seq_d_jax import predict
from pix2seq_d_jax import sampling
from pix2seq_d_jax import warm_start
from pix2seq_d_jax.convert import tf_pix2seq
from pix2seq_d_jax.models import pix2seq_d

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / 'tests' / 'data' / 'tf_parity'
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def fixture(name, *extra):
  """(checkpoint folder, meta, recorded arrays, our config) of one fixture."""
  folder = DATA / name
  for f in ('meta.json', 'outputs.npz', 'checkpoint'):
    if not (folder / f).is_file():
      raise FileNotFoundError(f'{folder / f} is missing: regenerate the fixtures with '
                              'tools/make_tf_parity_fixtures.py.')
  meta = json.loads((folder / 'meta.json').read_text())
  rec = dict(np.load(folder / 'outputs.npz'))
  config = config_lib.load_config(str(ROOT / meta['config']), list(meta['overrides']) +
                                  list(extra))
  return folder, meta, rec, config


@functools.lru_cache(maxsize=None)
def variables(name, ema):
  folder, _, _, config = fixture(name)
  return tf_pix2seq.load(str(folder), config, ema=ema)


def rel_err(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-30))


def check(what, ours, theirs):
  err = rel_err(ours, theirs)
  print(f'{what}: max relative error {err:.2e}')
  assert err < TOL, f'{what}: relative error {err:.3e} >= {TOL}'


def _model(config):
  return pix2seq_d.build_model(config)


def _cond(rec):
  if 'cond_maps' not in rec:
    return None
  return bits_lib.cond_bits(jnp.asarray(rec['cond_maps']), 0.1)


@pytest.mark.parametrize('name', ['image', 'video'])
def test_encoder(name):
  _, _, rec, config = fixture(name)
  enc_cat, tokens = _model(config).apply(variables(name, True), rec['images'], train=False,
                                         method='encode')
  check(f'{name} encoded_cat', enc_cat, rec['encoded_cat'])
  check(f'{name} tokens', tokens, rec['tokens'])


@pytest.mark.parametrize('name', ['image', 'video'])
def test_decoder_logits(name):
  _, _, rec, config = fixture(name)
  model = _model(config)
  v = variables(name, True)
  cond = _cond(rec)
  if cond is not None:
    check(f'{name} previous-frame bits', cond, rec['cond_bits'])
  enc_cat, tokens = model.apply(v, rec['images'], train=False, method='encode')
  logits = model.apply(v, rec['x_t'], rec['gamma'], enc_cat, tokens, train=False, cond=cond,
                       method='decode')
  check(f'{name} decoder logits', logits, rec['logits'])
  check(f'{name} x0 estimate', bits_lib.x0_from_output(logits, 'softmax_xent', 0.1),
        rec['x0_pred'])


@pytest.mark.parametrize('name', ['image', 'video'])
def test_ddim_step(name):
  _, meta, rec, config = fixture(name)
  model = _model(config)
  v = variables(name, True)
  cond = _cond(rec)
  t_now, t_next = diffusion.time_grid(meta['steps'], meta['td'])
  schedule = diffusion.get_schedule(config.diffusion.infer_schedule)
  i = meta['ddim_step']
  g_now, g_next = schedule(t_now[i]), schedule(t_next[i])
  check(f'{name} gamma(t_i)', np.full(rec['ddim_gamma_now'].shape, g_now), rec['ddim_gamma_now'])
  check(f'{name} gamma(t_next)', np.full(rec['ddim_gamma_next'].shape, g_next),
        rec['ddim_gamma_next'])
  enc_cat, tokens = model.apply(v, rec['images'], train=False, method='encode')
  bsz = rec['images'].shape[0]
  out = model.apply(v, rec['ddim_x_t'], jnp.full((bsz,), g_now), enc_cat, tokens, train=False,
                    cond=cond, method='decode')
  x0 = bits_lib.x0_from_output(out, 'softmax_xent', config.diffusion.b)
  x_next = diffusion.ddim_step(rec['ddim_x_t'], x0, g_now, g_next, config.diffusion.b)
  check(f'{name} one DDIM step', x_next, rec['ddim_x_next'])


@pytest.mark.parametrize('name', ['image', 'video'])
def test_inference(name, monkeypatch):
  _, meta, rec, config = fixture(name)
  model = _model(config)
  v = variables(name, True)
  cond = _cond(rec)
  noise = jnp.asarray(rec['infer_noise'])
  monkeypatch.setattr(sampling, 'initial_noise', lambda rng, ids, shape: noise)
  bsz = noise.shape[0]
  masks = sampling.sample(v, rec['images'], jnp.arange(bsz), jax.random.PRNGKey(0), meta['td'],
                          model=model, settings=sampling.SampleSettings.from_config(config),
                          steps=meta['steps'], cond=cond)
  ours = np.asarray(masks)
  theirs = rec['infer_masks']
  print(f'{name} 5-step masks: {np.sum(ours != theirs)} of {theirs.size} values differ')
  np.testing.assert_array_equal(ours, theirs)

  enc_cat, tokens = model.apply(v, rec['images'], train=False, method='encode')

  def denoise(x_t, gamma, carry):
    out = model.apply(v, x_t, gamma, enc_cat, tokens, train=False, cond=cond, method='decode')
    return bits_lib.x0_from_output(out, 'softmax_xent', 0.1), jnp.zeros(()), carry

  x0, _ = diffusion.ddim_sample(denoise, noise, steps=meta['steps'], td=meta['td'],
                                schedule=diffusion.get_schedule(config.diffusion.infer_schedule),
                                x0_clip=config.diffusion.b)
  check(f'{name} 5-step x0', x0, rec['infer_x0'])


@pytest.mark.parametrize('name', ['image', 'video'])
def test_training_loss(name):
  _, _, rec, config = fixture(name)
  model = _model(config)
  v = variables(name, False)   # training uses the online weights and batch statistics
  b, k, p = config.diffusion.b, config.dataset.max_instances, config.diffusion.mask_weight_p
  label_map = jnp.asarray(rec['label_map'])
  x0 = bits_lib.map_to_analog_bits(label_map, b)
  check(f'{name} analog bits', x0, rec['masks_bits'])
  weights = losses.instance_size_weights(label_map[..., 1], k, p)
  check(f'{name} mask weights', weights, rec['weights'])
  gamma = diffusion.get_schedule(config.diffusion.train_schedule)(jnp.asarray(rec['loss_t']))
  x_t = diffusion.corrupt(x0, gamma[:, None, None, None], jnp.asarray(rec['loss_noise']))
  (enc_cat, tokens), _ = model.apply(v, rec['images'], train=True, method='encode',
                                     mutable=['batch_stats'])
  out = model.apply({'params': v['params']}, x_t, gamma, enc_cat, tokens, train=True,
                    cond=_cond(rec), method='decode')
  loss, _ = losses.diffusion_loss(out, label_map, x0, weights, 'softmax_xent', b)
  check(f'{name} training loss', loss, rec['loss'])


def test_ema_and_online_weights_differ():
  ema, online = variables('image', True), variables('image', False)
  a = ema['params']['decoder']['head']['kernel']
  o = online['params']['decoder']['head']['kernel']
  assert a.shape == o.shape and not np.allclose(a, o)


def test_detection_checkpoint_fills_backbone_and_encoder(capsys):
  folder, _, rec, config = fixture('det')
  v = tf_pix2seq.load_encoder(str(folder), config)
  report = capsys.readouterr().out
  assert 'filled backbone' in report and 'filled encoder' in report, report
  assert 'left as initialised: decoder, fpn' in report, report
  assert 'optimizer state' in report and 'Pix2Seq detection heads' in report, report
  assert set(v['params']) == {'backbone', 'encoder'}
  model = _model(config)

  def run(m, images):
    c2, c3, c4 = m.backbone(images, False)
    return c2, c3, c4, m.encoder(c4, False)

  c2, c3, c4, tokens = model.apply(v, rec['images'], method=run)
  for what, ours in (('c2', c2), ('c3', c3), ('c4', c4), ('tokens', tokens)):
    check(f'det {what}', ours, rec[what])


def test_detection_checkpoint_is_not_a_full_model():
  folder, _, _, config = fixture('det')
  with pytest.raises(tf_pix2seq.CheckpointError, match='load_encoder'):
    tf_pix2seq.load(str(folder), config)


def test_every_checkpoint_variable_is_mapped_or_listed_unused():
  for name in ('image', 'video', 'det'):
    ckpt = tf_pix2seq.Checkpoint(str(DATA / name))
    assert not ckpt.unknown
    assert len(ckpt.mapped) + len(ckpt.unused) == len(ckpt.shapes)
  assert tf_pix2seq.map_name('model/encoder/stem_conv/kernel' + tf_pix2seq.SUFFIX) is None


def test_shape_mismatch_names_both_sides():
  folder, _, _, config = fixture('image', 'model.encoder.mlp_dim=48')
  with pytest.raises(tf_pix2seq.CheckpointError) as err:
    tf_pix2seq.load(str(folder), config)
  msg = str(err.value)
  assert 'enc_layers/0/mlp/mlp_layers/0/dense1/' in msg, msg
  assert 'params/encoder/layer0/mlp/Dense_0/' in msg, msg
  assert '64]' in msg and '48]' in msg, msg


def test_unfilled_variable_of_ours_is_an_error():
  folder, _, _, config = fixture('image', 'model.encoder.num_layers=3')
  with pytest.raises(tf_pix2seq.CheckpointError, match='encoder/layer2/'):
    tf_pix2seq.load(str(folder), config)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no TF checkpoint'):
    tf_pix2seq.resolve(str(tmp_path / 'nothing'))


def test_converted_workdir_predicts_and_initialises(tmp_path):
  """The CLI's workdir is read by Predictor.from_workdir (same weights as `load`), and both it
  and the authors' checkpoint itself are accepted by config.train.init_from."""
  from pix2seq_d_jax import sharding
  from pix2seq_d_jax import state as state_lib
  from pix2seq_d_jax.convert import __main__ as convert_main
  folder, meta, _, config = fixture('image')
  workdir = tmp_path / 'converted'
  convert_main.main(['--from=tf', f'--checkpoint={folder}', f'--config={ROOT / meta["config"]}',
                     f'--workdir={workdir}'] + [f'--config.{o}' for o in meta['overrides']])
  pred = predict.Predictor.from_workdir(str(workdir))
  want = variables('image', True)
  np.testing.assert_array_equal(np.asarray(pred.variables['params']['decoder']['head']['kernel']),
                                want['params']['decoder']['head']['kernel'])
  out = pred(np.zeros((1, 32, 32, 3), np.uint8), steps=2)
  assert out['class'].shape == (1, 32, 32)

  mesh = sharding.make_mesh((('data', -1), ('fsdp', 1)))
  for source, module in ((str(workdir), 'decoder'), (str(folder), 'decoder'),
                         (str(DATA / 'det'), 'encoder')):
    cfg = fixture('det')[3] if module == 'encoder' else config
    abstract = state_lib.abstract_state(cfg)
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    # Only the copied module is checked, so the rest may start as zeros (nothing to compile).
    fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
    with cfg.unlocked():
      cfg.train.init_from = source
    try:
      got = warm_start.init_from(fresh, cfg, shardings)
    finally:
      with cfg.unlocked():
        cfg.train.init_from = ''
    ref = (tf_pix2seq.load_encoder(str(DATA / 'det'), cfg, verbose=False) if module == 'encoder'
           else want)
    leaf = lambda t: np.asarray(jax.tree.leaves(t['params'][module])[0])
    np.testing.assert_array_equal(leaf({'params': got.ema_params}), leaf(ref))
    np.testing.assert_array_equal(leaf({'params': got.params}), leaf(ref))
