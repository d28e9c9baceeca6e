#!/usr/bin/env python3
"""Writes the TensorFlow parity fixtures under tests/data/tf_parity/ (run once, by hand).

It builds the authors' TensorFlow Pix2Seq-D (`models/panoptic_diffusion.py` of
google-research/pix2seq) and their Pix2Seq detection model (`models/ar_model.py`) on small
configurations with random weights, writes their variables with `tf.train.Checkpoint` (the
object-based format their trainer writes), and records, for fixed inputs and noise, what their
code computes. `tests/test_tf_parity.py` loads the checkpoints with
`pix2seq_d_jax.convert.tf_pix2seq` and checks our model reproduces every recorded array.

Their code is imported from `--reference` (a checkout of google-research/pix2seq at commit
eabd4e98f65f7627a0e727d11a4b9cbba916283d) and is not part of this repository. It needs an
environment with TensorFlow 2.21 and tf-keras 2.21 (their code uses Keras 2), ml-collections and
einops; `tensorflow_addons` (which does not install on TF 2.21) is replaced in memory by the two
names their model touches.

  TF_USE_LEGACY_KERAS=1 python tools/make_tf_parity_fixtures.py --reference=PATH/pix2seq \
      --out=tests/data/tf_parity

Fixtures (each: `<name>/ckpt-<step>.{index,data-*}`, `<name>/checkpoint`, `<name>/outputs.npz`,
`<name>/meta.json`; meta.json holds the `--config.*` overrides of configs/coco_panoptic.py that
give our equivalent model):
  image  Pix2Seq-D, cat+attn, ResNet-50-C4 at 1/16 width, 2 encoder layers, 2 decoder
         transformer layers, with EMA copies and AdamW slots.
  video  the same model with two previous frames as extra decoder inputs, non-square images.
  det    a Pix2Seq detection model (ResNet-50-C4 + transformer encoder + autoregressive decoder)
         with AdamW slots: the kind of checkpoint the authors publish for Objects365.
"""

import argparse
import json
import os
import pathlib
import sys
import types

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top

SEED = 0
STEPS = 5            # inference steps
TD = 1.0             # asymmetric time difference of the inference
TIMES = (0.3, 0.8)   # training times t of the recorded loss (one per example)
DDIM_STEP = 1        # index i of the recorded single DDIM step (t = 1 - i / STEPS)

# name -> sizes. 'ours' are the overrides of configs/coco_panoptic.py for the same model.
SPECS = {
    'image': dict(image=(32, 32), mask=(16, 16), batch=2, cond_frames=0, width=4,
                  enc_layers=2, enc_dim=32, enc_heads=4, enc_mlp=64, fpn=16, dec_dim=8,
                  ch_mult=(1, 1, 2, 2), res_blocks=(1, 1, 1, 1), t_dim=32, t_layers=2,
                  t_head=8, optimizer=False, ema=True),
    'video': dict(image=(32, 64), mask=(8, 16), batch=1, cond_frames=2, width=4,
                  enc_layers=2, enc_dim=32, enc_heads=2, enc_mlp=96, fpn=16, dec_dim=8,
                  ch_mult=(1, 2, 2), res_blocks=(1, 2, 1), t_dim=32, t_layers=2,
                  t_head=16, optimizer=False, ema=True),
}
DET = dict(image=(64, 64), batch=2, width=4, enc_layers=2, enc_dim=32, enc_heads=4, enc_mlp=128)
NUM_CLASSES = 134
MAX_INSTANCES = 101
B_SCALE = 0.1
MASK_WEIGHT_P = 0.2


def install_tensorflow_addons_shim():
  """`tensorflow_addons` for their imports: GroupNormalization (tf-keras's), LAMB (unused)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def group_normalization(groups=32, axis=-1, epsilon=1e-3, **kwargs):
    return tf.keras.layers.GroupNormalization(groups=groups, axis=axis, epsilon=epsilon,
                                              **kwargs)

  def lamb(*args, **kwargs):
    raise NotImplementedError('LAMB is not available in this environment.')

  tfa = types.ModuleType('tensorflow_addons')
  tfa.layers = types.ModuleType('tensorflow_addons.layers')
  tfa.layers.GroupNormalization = group_normalization
  tfa.optimizers = types.ModuleType('tensorflow_addons.optimizers')
  tfa.optimizers.LAMB = lamb
  sys.modules.update({'tensorflow_addons': tfa, 'tensorflow_addons.layers': tfa.layers,
                      'tensorflow_addons.optimizers': tfa.optimizers})


def our_overrides(spec) -> list[str]:
  """`--config.key=value` overrides of configs/coco_panoptic.py for the same model."""
  return [
      f'model.image_size={spec["image"]}', f'model.mask_size={spec["mask"]}',
      f'model.num_cond_frames={spec["cond_frames"]}', f'model.backbone.width={spec["width"]}',
      f'model.encoder.num_layers={spec["enc_layers"]}', f'model.encoder.dim={spec["enc_dim"]}',
      f'model.encoder.num_heads={spec["enc_heads"]}', f'model.encoder.mlp_dim={spec["enc_mlp"]}',
      'model.encoder.dropout=0.0', 'model.encoder.drop_path=0.0',
      f'model.fpn_dim={spec["fpn"]}', f'model.decoder.dim={spec["dec_dim"]}',
      f'model.decoder.ch_multipliers={spec["ch_mult"]}',
      f'model.decoder.num_res_blocks={spec["res_blocks"]}', 'model.decoder.dropout=0.0',
      f'model.decoder.transformer_dim={spec["t_dim"]}',
      f'model.decoder.transformer_layers={spec["t_layers"]}',
      f'model.decoder.transformer_head_dim={spec["t_head"]}',
      f'model.decoder.transformer_mlp_dim={4 * spec["t_dim"]}',
      f'dataset.num_classes={NUM_CLASSES}', f'dataset.max_instances={MAX_INSTANCES}',
      f'diffusion.b={B_SCALE}', f'diffusion.mask_weight_p={MASK_WEIGHT_P}',
      f'eval.td={TD}', f'eval.steps={STEPS}',
  ]


def panoptic_config(spec):
  """Their config (configs/config_diffusion_panoptic_base.py) set to `spec`, dropout off."""
  from configs import config_base  # pylint: disable=g-import-not-at-top
  from configs import config_diffusion_panoptic_base as base  # pylint: disable=g-import-not-at-top
  from configs import dataset_configs  # pylint: disable=g-import-not-at-top
  # Their released dataset table has no panoptic entry; the model never reads it.
  dataset_configs.dataset_configs.setdefault(
      'coco/2017_panoptic_segmentation',
      config_base.D(name='coco/2017_panoptic_segmentation', num_classes=NUM_CLASSES))
  h, w = spec['image']
  mh, mw = spec['mask']
  config = base.get_config('panoptic_segmentation@coco/2017_panoptic_segmentation,resnet-c,'
                           f'transunet,{h}x{w},{mh}x{mw}')
  m, d = config.model, config.decoder
  m.conditional = 'cat+attn'
  m.pred_type = 'x_softmax_xent'
  m.self_cond = 'none'
  m.b_scale = B_SCALE
  m.mask_weight_p = MASK_WEIGHT_P
  m.x0_clip = 'auto'
  m.td = TD
  m.train_schedule = m.infer_schedule = 'cosine'
  m.time_scaling = 1000  # released configs leave it unset (the constructor default is 1e4)
  with m.ignore_type():
    m.resnet_width_multiplier = spec['width'] / 64
  m.num_encoder_layers = spec['enc_layers']
  m.dim_att = spec['enc_dim']
  m.num_heads = spec['enc_heads']
  m.dim_mlp = spec['enc_mlp']
  m.drop_path = m.drop_units = m.drop_att = 0.0
  m.enc_fuse_dim = spec['fpn']
  d.dim = spec['dec_dim']
  d.ch_multipliers = ','.join(map(str, spec['ch_mult']))
  d.n_res_blocks = ','.join(map(str, spec['res_blocks']))
  d.udrop = 0.0
  d.mhsa_resolutions = '0'
  d.n_mlp_blocks = 0
  d.in_kernel_size = d.out_kernel_size = 1
  d.transformer_strides = 1
  d.transformer_dim = spec['t_dim']
  d.transformer_blocks = spec['t_layers']
  d.per_head_dim = spec['t_head']
  d.outp_softmax_groups = 2
  config.task.max_instances_per_image = MAX_INSTANCES
  config.optimization.weight_decay = 0.05
  return config


def fan_in(name, shape):
  if len(shape) == 4:
    return int(np.prod(shape[:3]))
  if len(shape) == 3:   # Keras MultiHeadAttention: q/k/v [d, heads, hd], output [heads, hd, d]
    return int(shape[0] * shape[1]) if '_output_dense' in name else int(shape[0])
  return int(shape[0])


def randomize(variables, rng, head_gain=4.0):
  """Random values for every variable (kernels ~ N(0, 1/fan_in), affine terms around 1 / 0,
  BatchNorm statistics away from 0 / 1), so that no parameter is left at an initial value."""
  for v in variables:
    name, shape = v.name, tuple(v.shape)
    if 'moving_variance' in name:
      value = rng.uniform(0.5, 2.0, shape)
    elif 'moving_mean' in name:
      value = rng.normal(0.0, 0.3, shape)
    elif name.endswith('gamma:0'):
      value = 1.0 + 0.2 * rng.normal(size=shape)
    elif name.endswith('beta:0') or name.endswith('bias:0'):
      value = 0.1 * rng.normal(size=shape)
    elif len(shape) >= 2:
      value = rng.normal(size=shape) / np.sqrt(fan_in(name, shape))
      if 'conv_out' in name:
        value *= head_gain  # peaked softmaxes: the sampled masks are far from bit thresholds
    else:
      value = rng.normal(size=shape)
    v.assign(value.astype(np.float32))


def pin_noise(scheduler, noise):
  """Makes their scheduler draw `noise` instead of fresh normal samples."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  scheduler.sample_noise = lambda shape: tf.constant(noise)


def write_checkpoint(out_dir: pathlib.Path, step: int, **objects):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out_dir.mkdir(parents=True, exist_ok=True)
  for f in out_dir.glob('ckpt-*'):
    f.unlink()
  ckpt = tf.train.Checkpoint(global_step=tf.Variable(step, dtype=tf.int64), **objects)
  manager = tf.train.CheckpointManager(ckpt, str(out_dir), max_to_keep=1)
  return manager.save(checkpoint_number=step)


def make_panoptic(name, spec, out: pathlib.Path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from models import diffusion_utils  # pylint: disable=g-import-not-at-top
  from models import model_utils  # pylint: disable=g-import-not-at-top
  from models import panoptic_diffusion  # pylint: disable=g-import-not-at-top
  from tasks import task_utils  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(SEED + len(name))
  tf.random.set_seed(SEED)
  config = panoptic_config(spec)
  bsz, (h, w), (mh, mw) = spec['batch'], spec['image'], spec['mask']
  p = spec['cond_frames']
  images = rng.uniform(0, 1, (bsz, h, w, 3)).astype(np.float32)
  label_map = np.stack([rng.integers(0, NUM_CLASSES, (bsz, mh, mw)),
                        rng.integers(0, MAX_INSTANCES, (bsz, mh, mw))], -1).astype(np.int32)
  cond_maps = np.stack([np.stack([rng.integers(0, NUM_CLASSES, (bsz, mh, mw)),
                                  rng.integers(0, MAX_INSTANCES, (bsz, mh, mw))], -1)
                        for _ in range(p)] or [np.zeros((bsz, mh, mw, 2))], 1)
  cond_maps = cond_maps[:, :p].astype(np.int32)  # [B, P, h, w, 2], oldest first
  masks = task_utils.integer_map_to_bits(label_map, 16, B_SCALE)
  weights = task_utils.get_normalized_weight(label_map[..., 1], MAX_INSTANCES, MASK_WEIGHT_P)
  cond = None
  if p:
    cond_int = tf.concat([cond_maps[:, j] for j in range(p)], -1)  # [B, h, w, 2P]
    cond = task_utils.integer_map_to_bits(cond_int, 16 * p, B_SCALE, num_channels=2 * p)
  inputs = images if cond is None else (images, cond)

  model = panoptic_diffusion.Model(config)
  # Variables: one training call (online), one eval-mode encoder + denoiser call (EMA copies).
  model(inputs, masks, weights, training=True)
  enc_cat, enc = model.encode_images(tf.constant(images), training=False)
  x_in = [tf.zeros(masks.shape), enc_cat] + ([cond] if cond is not None else [])
  model.denoise(tf.concat(x_in, -1), enc, tf.zeros([bsz]), training=False)
  randomize(model.variables, rng)
  objects = {'model': model}
  if spec['optimizer']:
    optimizer = model_utils.build_optimizer(config.optimization, 1e-4)
    optimizer.build(model.trainable_variables)
    objects['optimizer'] = optimizer
  path = write_checkpoint(out / name, 1000, **objects)

  rec = {'images': images, 'label_map': label_map, 'masks_bits': masks.numpy(),
         'weights': weights.numpy()}
  if p:
    rec['cond_maps'] = cond_maps
    rec['cond_bits'] = cond.numpy()
  # Encoder (eval mode: EMA weights and BatchNorm statistics).
  enc_cat, enc = model.encode_images(tf.constant(images), training=False)
  rec['encoded_cat'], rec['tokens'] = enc_cat.numpy(), enc.numpy()
  # Decoder logits for a given x_t and gamma.
  t = np.asarray(TIMES[:bsz], np.float32)
  noise = rng.normal(size=masks.shape).astype(np.float32)
  gamma = diffusion_utils.cosine_schedule_simple(tf.constant(t))
  g4 = tf.reshape(gamma, [-1, 1, 1, 1])
  x_t = masks * tf.sqrt(g4) + noise * tf.sqrt(1 - g4)
  denoise = model.get_cond_denoise(enc_cat, enc, cond, return_logits=True)
  rec['x_t'], rec['gamma'] = x_t.numpy(), gamma.numpy()
  rec['logits'] = denoise(x_t, gamma, training=False).numpy()
  rec['x0_pred'] = model.get_cond_denoise(enc_cat, enc, cond)(x_t, gamma, training=False).numpy()
  # One DDIM step (their Scheduler.generate loop body at step DDIM_STEP of STEPS).
  x0_clip = diffusion_utils.get_x0_clipping_function(model.x0_clip)
  step_x = rng.normal(size=masks.shape).astype(np.float32)
  ts = tf.ones([bsz, 1, 1, 1])
  t_now = ts * (1.0 - DDIM_STEP / STEPS)
  t_next = tf.maximum(ts * (1.0 - (DDIM_STEP + 1 + TD) / STEPS), 0)
  g_now, g_next = (diffusion_utils.cosine_schedule_simple(t_now),
                   diffusion_utils.cosine_schedule_simple(t_next))
  pred = model.get_cond_denoise(enc_cat, enc, cond)(tf.constant(step_x), g_now, training=False)
  x0_eps = diffusion_utils.get_x0_eps(step_x, g_now, pred, 'x', x0_clip, truncate_noise=True)
  nxt = model.scheduler.transition_step(step_x, x0_eps['data_pred'], x0_eps['noise_pred'],
                                        g_now, g_next, 'ddim')
  rec['ddim_x_t'], rec['ddim_gamma_now'] = step_x, g_now.numpy().reshape(-1)
  rec['ddim_gamma_next'], rec['ddim_x_next'] = g_next.numpy().reshape(-1), nxt.numpy()
  # 5-step inference with given initial noise, and the masks it decodes to.
  infer_noise = rng.normal(size=masks.shape).astype(np.float32)
  pin_noise(model.scheduler, infer_noise)
  x0 = model.infer(inputs, iterations=STEPS, method='ddim')
  rec['infer_noise'], rec['infer_x0'] = infer_noise, x0.numpy()
  rec['infer_masks'] = task_utils.bits_to_panoptic_map(x0, 16, NUM_CLASSES,
                                                       MAX_INSTANCES).numpy()
  # Training loss (online weights, BatchNorm on batch statistics) for given t and noise.
  pin_noise(model.scheduler, noise)
  m, n, _, den = model.noise_denoise(inputs, masks, tf.constant(t), training=True)
  rec["loss"] = np.float32(model.compute_loss(m, n, den, weights).numpy())
  rec['loss_t'], rec['loss_noise'] = t, noise
  np.savez(out / name / 'outputs.npz', **rec)
  meta = {'kind': 'pix2seq_d', 'checkpoint': pathlib.Path(path).name,
          'config': 'configs/coco_panoptic.py', 'overrides': our_overrides(spec),
          'steps': STEPS, 'td': TD, 'ddim_step': DDIM_STEP, 'spec': spec}
  (out / name / 'meta.json').write_text(json.dumps(meta, indent=1))
  print(f'{name}: {path}, loss {rec["loss"]:.6f}, '
        f'{sum(int(np.prod(v.shape)) for v in model.variables):,} values')


def make_detection(out: pathlib.Path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from models import ar_model  # pylint: disable=g-import-not-at-top
  from models import model_utils  # pylint: disable=g-import-not-at-top

  spec = DET
  rng = np.random.default_rng(SEED + 100)
  tf.random.set_seed(SEED)
  d = ml_collections.ConfigDict
  h, w = spec['image']
  config = d({'model': d(dict(
      name='encoder_ar_decoder', image_size=[h, w], max_seq_len=16, vocab_size=64,
      use_cls_token=False, shared_decoder_embedding=True, decoder_output_bias=True,
      patch_size=16, drop_path=0.0, drop_units=0.0, drop_att=0.0, dec_proj_mode='mlp',
      pos_encoding='sin_cos', pos_encoding_dec='learned', resnet_variant='c4', resnet_depth=50,
      resnet_sk_ratio=0.0, resnet_width_multiplier=spec['width'] / 64,
      num_encoder_layers=spec['enc_layers'], dim_att=spec['enc_dim'],
      num_heads=spec['enc_heads'], dim_mlp=spec['enc_mlp'], num_decoder_layers=1,
      dim_att_dec=16, dim_mlp_dec=32, num_heads_dec=2)),
      'optimization': d(dict(optimizer='adamw', weight_decay=0.05, beta1=0.9, beta2=0.95,
                             eps=1e-8, global_clipnorm=-1.0))})
  model = ar_model.Model(config)
  images = rng.uniform(0, 1, (spec['batch'], h, w, 3)).astype(np.float32)
  seq = rng.integers(0, 64, (spec['batch'], 16)).astype(np.int32)
  model(tf.constant(images), tf.constant(seq), training=True)
  randomize(model.variables, rng)
  optimizer = model_utils.build_optimizer(config.optimization, 1e-4)
  optimizer.build(model.trainable_variables)
  path = write_checkpoint(out / 'det', 400, model=model, optimizer=optimizer)
  tokens, stack = model.encoder(tf.constant(images), False, ret_list=True)
  rec = {'images': images, 'tokens': tokens.numpy(), 'c2': stack[0].numpy(),
         'c3': stack[1].numpy(), 'c4': stack[2].numpy()}
  np.savez(out / 'det' / 'outputs.npz', **rec)
  ours = dict(SPECS['image'], image=spec['image'], mask=(spec['image'][0] // 4,) * 2,
              enc_layers=spec['enc_layers'], enc_dim=spec['enc_dim'],
              enc_heads=spec['enc_heads'], enc_mlp=spec['enc_mlp'], width=spec['width'])
  meta = {'kind': 'pix2seq_detection', 'checkpoint': pathlib.Path(path).name,
          'config': 'configs/coco_panoptic.py', 'overrides': our_overrides(ours), 'spec': spec}
  (out / 'det' / 'meta.json').write_text(json.dumps(meta, indent=1))
  print(f'det: {path}, {sum(int(np.prod(v.shape)) for v in model.variables):,} values')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--reference', required=True,
                      help='checkout of google-research/pix2seq (the folder holding models/)')
  parser.add_argument('--out', default='tests/data/tf_parity')
  parser.add_argument('--only', default='image,video,det')
  args = parser.parse_args()
  ref = pathlib.Path(args.reference).resolve()
  if not (ref / 'models' / 'panoptic_diffusion.py').is_file():
    sys.exit(f'--reference={args.reference}: no models/panoptic_diffusion.py there; pass the '
             'folder of a google-research/pix2seq checkout.')
  if os.environ.get('TF_USE_LEGACY_KERAS') != '1':
    sys.exit('Set TF_USE_LEGACY_KERAS=1 (their code needs Keras 2, from tf-keras).')
  sys.path.insert(0, str(ref))
  install_tensorflow_addons_shim()
  out = pathlib.Path(args.out)
  for name in args.only.split(','):
    if name == 'det':
      make_detection(out)
    else:
      make_panoptic(name, SPECS[name], out)


if __name__ == '__main__':
  main()
