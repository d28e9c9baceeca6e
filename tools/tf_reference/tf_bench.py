#!/usr/bin/env python3
"""Timing harness for the authors' TensorFlow Pix2Seq-D (google-research/pix2seq); one JSON line.

  python tf_bench.py --checkout PATH --cfg A|B --what train|train_ema|encoder|decoder|infer \
      --xla 0|1 --n N [--warmup W]

Run it with the python of an environment holding TensorFlow 2.21 and tf-keras 2.21 (README.md
beside this file). `--checkout` (default: $P2S_TF_CHECKOUT) is a checkout of
google-research/pix2seq at commit eabd4e98f65f7627a0e727d11a4b9cbba916283d; its code is imported
from there unmodified, and every patch it needs is applied in memory here. `stubs/` beside this
file stands in for `tensorflow_addons`. One process per measurement.

Sequence: build the model eagerly -> first call (trace / Grappler / XLA compile, reported as
first_call_s) -> W further warm-up calls -> N timed calls.
stdout: ONE JSON line {"cfg", "what", "xla", "n", "median_s", "min_s", "max_s", "first_call_s",
"params", "tf", "onednn"}; everything else (diagnostics, per-call times, the CPU load of other
processes during each call) goes to stderr, in lines starting with '#'.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')   # their code expects Keras 2 (tf-keras)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

HERE = pathlib.Path(__file__).resolve().parent
COMMIT = 'eabd4e98f65f7627a0e727d11a4b9cbba916283d'

EXPECTED_PARAMS = {'A': 94_492_480, 'B': 13_706_624}
EXPECTED_TRAINABLE_VARS = {'A': 679, 'B': 389}
EXPECTED_EMA_PAIRS = {'A': 765, 'B': 475}

# cfg -> (image side, mask side, batch)
SIZES = {'A': (256, 128, 2), 'B': (64, 32, 8)}
N_ITER = 20  # DDIM steps for decoder-step / infer
SEED = 0


def log(*a):
  print('#', *a, file=sys.stderr, flush=True)


def use_checkout(path):
  """Puts the stand-ins and the authors' checkout first on sys.path; exits if it is not one."""
  if not path:
    sys.exit('tf_bench.py: no checkout of google-research/pix2seq given: pass --checkout PATH '
             f'(or set P2S_TF_CHECKOUT) to a checkout at commit {COMMIT}.')
  checkout = pathlib.Path(path).expanduser().resolve()
  if not (checkout / 'models' / 'panoptic_diffusion.py').is_file():
    sys.exit(f'tf_bench.py: --checkout {path}: no models/panoptic_diffusion.py there; pass the '
             f'root of a checkout of google-research/pix2seq at commit {COMMIT}.')
  sys.path[:0] = [str(HERE / 'stubs'), str(checkout)]
  return checkout


# ---------------------------------------------------------------- contention
_CLK = os.sysconf('SC_CLK_TCK')
_NCPU = os.cpu_count() or 1


def _machine_busy_s():
  with open('/proc/stat') as f:
    v = [int(x) for x in f.readline().split()[1:]]
  # user nice system idle iowait irq softirq steal ...
  busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
  return busy / _CLK


def _own_cpu_s():
  t = os.times()
  return t.user + t.system


class LoadMeter:
  """CPU-seconds used by other processes during a window, per wall-second per CPU."""

  def start(self):
    self.t0, self.m0, self.o0 = time.perf_counter(), _machine_busy_s(), _own_cpu_s()

  def stop(self):
    wall = time.perf_counter() - self.t0
    other = (_machine_busy_s() - self.m0) - (_own_cpu_s() - self.o0)
    own = _own_cpu_s() - self.o0
    return max(other, 0.) / max(wall * _NCPU, 1e-9), own / max(wall, 1e-9)


def wait_quiet(max_wait_s, thresh=0.05):
  if max_wait_s <= 0:
    return
  lm, t_end = LoadMeter(), time.time() + max_wait_s
  while True:
    lm.start()
    time.sleep(1.0)
    other, _ = lm.stop()
    if other < thresh:
      log(f'quiet: other-process load {other:.3f}')
      return
    if time.time() > t_end:
      log(f'WARNING: machine not quiet after {max_wait_s}s (other load {other:.3f}); timing anyway')
      return


# ---------------------------------------------------------------- config
class _SweepHelper:
  """Minimal stand-in for the hyper-sweep object get_sweep(h) expects."""

  @staticmethod
  def sweep(key, values):
    return [{key: v} for v in values]

  @staticmethod
  def product(lists):
    out = [{}]
    for lst in lists:
      out = [dict(a, **b) for a in out for b in lst]
    return out

  @staticmethod
  def chainit(lists):
    return [d for lst in lists for d in lst]


def _set_path(config, key, value):
  assert key.startswith('config.'), key
  parts = key[len('config.'):].split('.')
  node = config
  for i, p in enumerate(parts):
    idx = None
    if '[' in p:
      p, rest = p.split('[', 1)
      idx = int(rest.rstrip(']'))
    last = i == len(parts) - 1
    if idx is None:
      if last:
        node[p] = value
      else:
        node = node[p]
    else:
      node = node[p][idx]
      if last:
        raise ValueError(key)


def build_config(cfg):
  from configs import config_base
  from configs import dataset_configs
  D = config_base.D
  # Patch 2: the released dataset_configs has no panoptic entry; the model never reads it.
  dataset_configs.dataset_configs.setdefault(
      'coco/2017_panoptic_segmentation',
      D(name='coco/2017_panoptic_segmentation', num_classes=134,
        train_num_examples=118287, eval_num_examples=5000,
        train_split='train', eval_split='validation',
        batch_duplicates=1, cache_dataset=True))
  from configs import config_diffusion_panoptic_image as cimg
  image, mask, _ = SIZES[cfg]
  cimg.IMAGE_SIZE = f'{image}x{image}'
  cimg.MASK_SIZE = f'{mask}x{mask}'
  cimg.MODE = 'train_low_res'  # compute values identical to train_high_res; lr values from low_res
  config = cimg.get_config()
  combos = cimg.get_sweep(_SweepHelper())
  assert len(combos) == 1, combos
  for k, v in combos[0].items():
    _set_path(config, k, v)
  # Patch 3: not defined in any released config (TransUNet default would be 1e4).
  config.model.time_scaling = 1000
  if cfg == 'B':
    m, d = config.model, config.decoder
    m.num_encoder_layers, m.dim_att, m.dim_mlp, m.num_heads = 2, 128, 512, 4
    m.enc_fuse_dim = 64
    d.dim, d.transformer_dim, d.transformer_blocks, d.per_head_dim = 32, 128, 1, 32
  return config


# ---------------------------------------------------------------- XLA patch
def patch_upsampling_for_xla():
  """Patch 5: ResizeNearestNeighborGrad has no XLA_CPU_JIT kernel.

  Replaces tf.keras.layers.UpSampling2D (nearest, integer factors, channels_last)
  by reshape+broadcast (bitwise identical output). Only for jit_compile train runs.
  """
  import tensorflow as tf
  orig = tf.keras.layers.UpSampling2D

  class UpSampling2DBroadcast(tf.keras.layers.Layer):

    def __init__(self, size=(2, 2), data_format=None, interpolation='nearest',
                 **kwargs):
      super().__init__(**kwargs)
      if isinstance(size, int):
        size = (size, size)
      self.size = tuple(int(s) for s in size)
      if interpolation != 'nearest':
        raise NotImplementedError(interpolation)
      if data_format not in (None, 'channels_last'):
        raise NotImplementedError(data_format)

    def call(self, x):
      sh, sw = self.size
      dyn = tf.shape(x)
      b, h, w, c = [x.shape[i] if x.shape[i] is not None else dyn[i]
                    for i in range(4)]
      y = x[:, :, tf.newaxis, :, tf.newaxis, :]
      y = tf.broadcast_to(y, [b, h, sh, w, sw, c])
      return tf.reshape(y, [b, h * sh, w * sw, c])

    def get_config(self):
      cfg = super().get_config()
      cfg.update(size=self.size, interpolation='nearest')
      return cfg

  tf.keras.layers.UpSampling2D = UpSampling2DBroadcast
  return orig, UpSampling2DBroadcast


# ---------------------------------------------------------------- main
def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[1])
  ap.add_argument('--checkout', default=os.environ.get('P2S_TF_CHECKOUT', ''),
                  help='checkout of google-research/pix2seq (default: $P2S_TF_CHECKOUT)')
  ap.add_argument('--cfg', choices=['A', 'B'], required=True)
  ap.add_argument('--what', required=True,
                  choices=['train', 'train_ema', 'encoder', 'decoder', 'infer'])
  ap.add_argument('--xla', type=int, choices=[0, 1], default=0)
  ap.add_argument('--n', type=int, default=10)
  ap.add_argument('--warmup', type=int, default=1,
                  help='warm-up calls after the first (compile) call')
  ap.add_argument('--quiet-wait', type=float,
                  default=float(os.environ.get('QUIET_WAIT', '0')),
                  help='wait up to this many s for other-process load < 5%% before timing')
  ap.add_argument('--upsample-patch', type=int, choices=[-1, 0, 1], default=-1,
                  help='-1: auto (only for xla train runs); 0/1 force (control runs)')
  ap.add_argument('--check-params', type=int, choices=[0, 1], default=1)
  ap.add_argument('--lower-only', type=int, choices=[0, 1], default=0,
                  help='xla=1 only: lower to HLO (experimental_get_compiler_ir), no compile/run')
  args = ap.parse_args()
  checkout = use_checkout(args.checkout)

  t_proc0 = time.perf_counter()
  import numpy as np
  import tensorflow as tf
  log(f'tf {tf.__version__}, keras {tf.keras.__name__}, checkout {checkout}, '
      f'TF_ENABLE_ONEDNN_OPTS={os.environ.get("TF_ENABLE_ONEDNN_OPTS")!r}')
  onednn = None
  try:
    from tensorflow.python.util import _pywrap_util_port
    onednn = bool(_pywrap_util_port.IsMklEnabled())
    log(f'IsMklEnabled={onednn}, '
        f'intra={tf.config.threading.get_intra_op_parallelism_threads()} '
        f'inter={tf.config.threading.get_inter_op_parallelism_threads()}, ncpu={_NCPU}')
  except Exception as e:  # pylint: disable=broad-except
    log(f'IsMklEnabled: n/a ({e})')

  train_like = args.what in ('train', 'train_ema')
  use_patch = ((args.xla == 1 and train_like) if args.upsample_patch < 0
               else bool(args.upsample_patch))
  if use_patch:
    patch_upsampling_for_xla()
    log('UpSampling2D patched (reshape+broadcast)')

  tf.random.set_seed(SEED)
  np.random.seed(SEED)
  config = build_config(args.cfg)
  image, mask, bsz = SIZES[args.cfg]

  from models import diffusion_utils
  from models import model_utils
  from models import panoptic_diffusion
  from tasks import task_utils

  # ---- synthetic data, as TaskPanopticSegmentation.preprocess_batched(training=True)
  images = tf.random.uniform((bsz, image, image, 3), dtype=tf.float32)
  sem = tf.random.uniform((bsz, mask, mask), 0, config.dataset.num_classes, dtype=tf.int32)
  ins = tf.random.uniform((bsz, mask, mask), 0, config.task.max_instances_per_image, dtype=tf.int32)
  label_map = tf.stack([sem, ins], -1)
  t0 = time.perf_counter()
  weights = task_utils.get_normalized_weight(
      label_map[..., 1], config.task.max_instances_per_image, config.model.mask_weight_p)
  masks = task_utils.integer_map_to_bits(label_map, config.task.n_bits_label, config.model.b_scale)
  _ = masks.numpy(), weights.numpy()
  log(f'preprocess (eager, once, untimed): {1e3 * (time.perf_counter() - t0):.1f} ms')

  # ---- model: Patch 4, build directly, create vars eagerly (train call + eval enc/denoiser)
  t0 = time.perf_counter()
  model = panoptic_diffusion.Model(config)
  loss0 = model(images, masks, weights, training=True)
  _ = model.encode_images(tf.zeros(model.images_shape), training=False)
  _ = model.denoise(x=tf.zeros(model.denoise_x_shape),
                    c=tf.zeros(model.denoise_c_shape),
                    gamma=tf.zeros(model.denoise_gamma_shape), training=False)
  log(f'eager build: {time.perf_counter() - t0:.1f} s, initial loss {float(loss0):.4f}')

  def nparams(vs):
    return int(sum(int(np.prod(v.shape)) for v in vs))
  tvars = model.trainable_variables
  params = nparams(tvars)
  resnet = (nparams(model.encoder.resnet.trainable_variables)
            if hasattr(model.encoder, 'resnet') else '?')
  log(f'trainable params {params:,} in {len(tvars)} vars; '
      f'encoder {nparams(model.encoder.trainable_variables):,} (resnet {resnet}), '
      f'encoder_fuse {nparams(model.encoder_fuse.trainable_variables):,}, '
      f'denoiser {nparams(model.denoiser.trainable_variables):,}; '
      f'non-trainable {nparams(model.non_trainable_variables):,}')
  if args.check_params and params != EXPECTED_PARAMS[args.cfg]:
    log(f'ERROR: params {params:,} != expected {EXPECTED_PARAMS[args.cfg]:,} for cfg '
        f'{args.cfg}: is --checkout at commit {COMMIT}?')
    sys.exit(2)
  if len(tvars) != EXPECTED_TRAINABLE_VARS[args.cfg]:
    log(f'WARNING: {len(tvars)} trainable vars, expected {EXPECTED_TRAINABLE_VARS[args.cfg]}')

  # ---- the measured callables
  mcfg = config.model
  if train_like:
    c_opt = config.optimization
    batch_size_sched = config.train.batch_size  # sweep value (512), only feeds the lr schedule
    num_train_examples = config.dataset.train_num_examples
    # = utils.get_train_steps (which reads the runtime dataset object's num_train_examples)
    train_steps = config.train.steps or (
        num_train_examples * config.train.epochs // batch_size_sched + 1)
    warmup_steps = c_opt.warmup_steps or int(
        round(c_opt.warmup_epochs * num_train_examples // batch_size_sched))
    lr = model_utils.WarmUpAndDecay(
        c_opt.learning_rate, c_opt.learning_rate_scaling, batch_size_sched,
        c_opt.learning_rate_schedule, warmup_steps, train_steps,
        tail_steps=c_opt.get('tail_steps', 0), end_lr_factor=c_opt.get('end_lr_factor', 0.))
    optimizer = model_utils.build_optimizer(c_opt, lr)
    optimizer.build(tvars)
    log(f'optimizer {type(optimizer).__name__}, warmup_steps {warmup_steps}, '
        f'train_steps {train_steps}')
    task_weight = config.task.weight

    if args.what == 'train_ema':
      ema_decay = c_opt.get('ema_decay', 0.)
      vars_src = (model.denoiser.variables + model.encoder.variables +
                  model.encoder_fuse.variables)
      vars_dst = (model.denoiser_ema.variables + model.encoder_ema.variables +
                  model.encoder_fuse_ema.variables)
      assert len(vars_src) == len(vars_dst), (len(vars_src), len(vars_dst))
      if c_opt.get('ema_name_exact_match', False):
        src = dict((v.name, v) for v in vars_src)
        vars_src = [src[v.name] for v in vars_dst]
      log(f'EMA pairs {len(vars_dst)} (expected {EXPECTED_EMA_PAIRS[args.cfg]}), '
          f'decay {ema_decay}')
    else:
      vars_src = vars_dst = None

    @tf.function(jit_compile=bool(args.xla))
    def step_fn(images, masks, weights):
      with tf.GradientTape() as tape:  # as official Trainer.train_step (gradient inside the tape)
        loss = model(images, masks, weights, training=True)
        grads = tape.gradient(loss * task_weight / 1, tvars)  # num_replicas_in_sync = 1
      optimizer.apply_gradients(zip(grads, tvars))
      if vars_dst is not None:
        for vs, vd in zip(vars_src, vars_dst):
          vd.assign(vd * ema_decay + vs * (1. - ema_decay))
      return loss

    def call(_k):
      return step_fn(images, masks, weights).numpy()
    lower = (step_fn, (images, masks, weights))

  elif args.what == 'encoder':
    @tf.function(jit_compile=bool(args.xla))
    def enc_fn(images):
      return model.encode_images(images, training=False)

    def call(_k):
      ec, et = enc_fn(images)
      return ec.numpy(), et.numpy()
    lower = (enc_fn, (images,))

  elif args.what == 'decoder':
    enc_once = tf.function(lambda x: model.encode_images(x, training=False))
    encoded_cat, encoded = enc_once(images)
    log(f'encoded_cat {encoded_cat.shape}, encoded tokens {encoded.shape} (computed once, untimed)')
    scheduler = model.scheduler
    time_transform = scheduler.get_time_transform(mcfg.infer_schedule)
    x0_clip_fn = diffusion_utils.get_x0_clipping_function(model.x0_clip)
    td, iterations, guidance = float(mcfg.td), N_ITER, 0.
    samples_shape = [bsz, mcfg.msize[0], mcfg.msize[1], model.x_channels]

    @tf.function(jit_compile=bool(args.xla))
    def dec_step(samples, t, encoded_cat, encoded):
      # one iteration of Scheduler.generate's loop body (ddim, self_cond none, guidance 0)
      ts = tf.ones([samples_shape[0]] + [1] * (len(samples_shape) - 1))
      get_step = lambda t: ts * (1.0 - tf.cast(t, tf.float32) / iterations)
      time_step = get_step(t)
      time_step_p = tf.maximum(get_step(t + 1 + td), 0)
      gamma, gamma_prev = time_transform(time_step), time_transform(time_step_p)
      transition_f = model.get_cond_denoise(encoded_cat, encoded, None)
      pred_out_nl = 0.
      pred_out_l = transition_f(samples, gamma, training=False)
      pred_out_ = pred_out_l * (1 + guidance) - pred_out_nl * guidance
      x0_eps = diffusion_utils.get_x0_eps(
          samples, gamma, pred_out_, mcfg.pred_type, x0_clip_fn, truncate_noise=True)
      samples = scheduler.transition_step(
          samples=samples, data_pred=x0_eps['data_pred'],
          noise_pred=x0_eps['noise_pred'], gamma_now=gamma,
          gamma_prev=gamma_prev, sampler_name='ddim')
      return samples, x0_eps['data_pred']

    noise0 = scheduler.sample_noise(samples_shape)
    state = {'samples': noise0}
    lower = (dec_step, (noise0, tf.constant(0.), encoded_cat, encoded))

    def call(k):
      t = k % iterations
      if t == 0:
        state['samples'] = noise0
      s, _ = dec_step(state['samples'], tf.constant(float(t)), encoded_cat, encoded)
      out = s.numpy()
      state['samples'] = s
      return out

  elif args.what == 'infer':
    @tf.function(jit_compile=bool(args.xla))
    def infer_fn(images):
      return model.infer(images, iterations=N_ITER, method='ddim')

    def call(_k):
      return infer_fn(images).numpy()
    lower = (infer_fn, (images,))

  if args.lower_only:
    assert args.xla == 1, '--lower-only needs --xla 1'
    fn, fargs = lower
    t0 = time.perf_counter()
    hlo = fn.experimental_get_compiler_ir(*fargs)(stage='hlo')
    log(f'lowered to HLO in {time.perf_counter() - t0:.1f} s: {len(hlo):,} chars, '
        f'{hlo.count(chr(10)):,} lines')
    print(json.dumps({'cfg': args.cfg, 'what': args.what, 'xla': 1, 'lowered': True,
                      'hlo_chars': len(hlo), 'params': params}), flush=True)
    return

  # ---- timing
  lm = LoadMeter()

  def timed(k):
    """(seconds, other processes' load, own cpu/wall) of call k."""
    lm.start()
    t0 = time.perf_counter()
    call(k)
    dt = time.perf_counter() - t0
    return (dt, *lm.stop())

  k = 0
  first, o, own = timed(k)
  k += 1
  log(f'first call {first:.3f} s (other load {o:.3f}, own cpu/wall {own:.2f})')
  for _ in range(max(args.warmup, 0)):
    dt, _, _ = timed(k)
    k += 1
    log(f'warm-up {dt:.4f} s')
  wait_quiet(args.quiet_wait)
  times, loads, owns = [], [], []
  for i in range(args.n):
    dt, o, own = timed(k)
    k += 1
    times.append(dt); loads.append(o); owns.append(own)
    log(f'timed {i}: {dt:.4f} s  other-load {o:.3f}  own cpu/wall {own:.2f}')
  if times:
    log(f'other-process load per call: median {statistics.median(loads):.3f} max {max(loads):.3f}; '
        f'own cpu/wall median {statistics.median(owns):.2f}; '
        f'process total {time.perf_counter() - t_proc0:.1f} s')
  res = {
      'cfg': args.cfg, 'what': args.what, 'xla': args.xla, 'n': len(times),
      'median_s': round(statistics.median(times), 5) if times else None,
      'min_s': round(min(times), 5) if times else None,
      'max_s': round(max(times), 5) if times else None,
      'first_call_s': round(first, 3), 'params': params, 'tf': tf.__version__,
      'onednn': onednn,
  }
  print(json.dumps(res), flush=True)


if __name__ == '__main__':
  main()
