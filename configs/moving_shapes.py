"""The embedded video default: Pix2Seq-D on synthetic moving-shapes clips (no download).

  python -m pix2seq_d_jax.main --config=configs/moving_shapes.py --workdir=runs/moving_shapes
  python -m pix2seq_d_jax.main --config=configs/moving_shapes.py:long --workdir=runs/ms_long
  python -m pix2seq_d_jax.main --config=configs/moving_shapes.py:runlocal --workdir=/tmp/smoke
  # J&F with ground-truth conditioning (a diagnostic of the tracking part alone):
  python -m pix2seq_d_jax.main --config=configs/moving_shapes.py --workdir=runs/moving_shapes \
      --mode=eval --config.eval.use_gt_cond=True

The video model of docs/spec.md §7 (docs/decisions.md §12) scaled down like configs/shapes.py: the
decoder also reads the analog bits of the two previous frames' masks (`model.num_cond_frames=2`);
training examples are 3-frame windows (the last frame is the target, the earlier two the condition,
each dropped with probability `dataset.frames_dropout`); evaluation streams whole clips,
conditioning every frame on the model's own previous predictions, and reports the DAVIS-2017
unsupervised J&F (stuff regions are background, thing instances are the objects; see
pix2seq_d_jax/eval_vos.py). It departs from the paper's recipe where configs/shapes.py
does, for the same measured reasons: K = 8, prior head bias, argmax decoding, batch 8, the slimmer
decoder, and `object_order='raster'`: training ids are numbered by each object's first appearance
in the clip (scanning frames in order, rows top to bottom) instead of a random permutation, so the
first frame's ids are a function of the image and later frames copy them from the condition (J&F
40.4 vs 36.5 with random ids after 1,200 vs 1,600 steps, see README).

One evaluation, at the end, with 4 DDIM steps on a clip's first frame and 2 on each later one
(`:long`: 20 / 10, as the default had at its middle and its end). The time saved pays for 2,000
training steps instead of 1,700 in the same wall time (2.57 steps/s, one evaluation 29 s
against two of 61 s on a 2-core CPU). Seeds 0 / 1 / 2 at 2,000 steps: J&F 49.0 / 39.1 / 44.9
with 4 / 2 steps, 46.4 / 42.4 / 47.0 with 20 / 10 and 46.8 / 39.2 / 41.2 with 2 / 1: the step
counts differ by less than the seeds do (see README).

Initialising from an image model (docs/decisions.md §7; the new input channels start at zero):
  --config.train.init_from=runs/shapes
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, runlocal=False, long=False)
  c = common.base_config()
  c.dataset.name = 'moving_shapes'
  common.shapes_recipe(c)                # as shapes.py (K = 8; DAVIS: 16), raster ids in the clip
  c.dataset.num_frames = 3               # training window: 2 condition frames + the target
  c.dataset.eval_num_frames = 10         # evaluation clips are streamed whole
  c.dataset.frames_dropout = 0.2         # per condition frame (docs/spec.md §7.1)
  c.dataset.num_train = 4096
  c.dataset.num_eval = 32

  c.model.num_cond_frames = 2

  c.train.num_steps = 2000
  c.train.checkpoint_every_steps = 1000

  c.eval.batch_size = 32
  c.eval.every_steps = c.train.num_steps   # one evaluation, at the end
  c.eval.steps = 4                       # DDIM steps of the first frame of a clip (paper: 20)
  c.eval.steps_later = 2                 # DDIM steps of every later frame (`:long`: 20 / 10)
  c.eval.use_gt_cond = False             # condition on ground truth instead of own predictions
  c.eval.num_visualizations = 4          # clips drawn as frame strips (PNG) and GIFs

  if args.long:
    c.train.num_steps = 8000
    c.train.checkpoint_every_steps = 1000
    c.eval.every_steps = 2000
    c.eval.steps = 20
    c.eval.steps_later = 10
  if args.runlocal:
    # A smoke test of the whole loop in well under a minute: a tiny model on 32x32 clips.
    c.dataset.synthetic_size = 32
    c.dataset.max_original_size = (32, 32)
    c.model.image_size = (32, 32)
    c.model.mask_size = (16, 16)
    c.model.backbone.width = 8
    c.model.encoder.dim = 32
    c.model.encoder.num_heads = 2
    c.model.encoder.mlp_dim = 64
    c.model.fpn_dim = 16
    c.model.decoder.dim = 16
    c.model.decoder.transformer_dim = 32
    c.model.decoder.transformer_head_dim = 16
    c.model.decoder.transformer_mlp_dim = 64
    c.dataset.num_train = 32
    c.dataset.num_eval = 2
    c.dataset.eval_num_frames = 4
    c.train.batch_size = 4
    c.train.num_steps = 4
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 2
    c.eval.every_steps = 4
    c.eval.batch_size = 2
    c.eval.steps = 2
    c.eval.steps_later = 1
    c.eval.num_visualizations = 1
  return c
