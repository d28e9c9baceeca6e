"""The embedded default: Pix2Seq-D on the synthetic panoptic shapes data set (no download).

  python -m pix2seq_d_jax.main --config=configs/shapes.py --workdir=runs/shapes
  python -m pix2seq_d_jax.main --config=configs/shapes.py:long --workdir=runs/shapes_long
  python -m pix2seq_d_jax.main --config=configs/shapes.py:runlocal --workdir=/tmp/smoke
  python -m pix2seq_d_jax.main --config=configs/shapes.py:size=32 --workdir=runs/shapes32

The same model as the paper (ResNet C4 + transformer encoder + feature merge + TransUNet decoder,
bit diffusion with two 256-way softmax heads, b = 0.1, cosine schedule, uniform t), scaled down to
run on a laptop CPU. What differs from the paper's recipe, each measured on this data set with a
10-minute budget on a 2-core CPU (see README, "Configs and expected results"):
- K = 8 ids (an image holds at most 7 segments), so the id head has 7 values to choose from;
- `model.decoder.head_bias='prior'`: the logits of values a channel can never hold (classes >= 9,
  ids >= 8) start at -8 instead of 0, so the first few hundred steps are not spent learning that;
- `eval.decode='argmax'`: the argmax of the last step's softmaxes instead of per-bit thresholds
  (an undertrained model's thresholded bits assemble values no hypothesis supports);
- batch 8: on a CPU, twice the optimizer steps for the same images learned faster than batch 16;
- a slimmer decoder (3 levels of one residual block, fpn_dim 32): 1.8x the steps per second;
- `dataset.object_order='raster'`: training ids are numbered by each segment's first pixel in
  raster order (after the crop and flip) instead of a random permutation of 1..K-1. With random
  ids the id head must learn to pool the noisy id bits over an object before it can keep touching
  things apart, and on this budget it does not (the id loss stays at ln 7); with raster ids a
  pixel's id is a function of the image, learned like the classes (PQ 58.0 / Things 36.3 after
  3,000 steps, against 37.7 / 21.7 at 2,000 and less later with random ids);
- `diffusion.mask_weight_p=0.7` (paper 0.2) and `diffusion.class_loss_weight=2` (paper 1): the
  things are small next to the stuff regions and their shape classes are learned last; a
  stronger size weight and a doubled class group put more of the loss on them. The default run:
  PQ 43.8 / Things 25.9 at 1,600 steps, against 43.3 / 17.5 with the paper's 0.2 and 1 (seeds
  0 / 1 / 2 on one core: Things 23.4 / 26.1 / 23.2);
- masks a quarter of the image side (16 x 16 for 64 x 64 images; the paper: half). The decoder
  runs at mask resolution, so a step costs less than half (0.093 against 0.200 s on the two CPU
  devices of the AVX-512 machine) and 3,400 steps take the wall time 1,600 took with 32 x 32
  masks: PQ 51.6 / 52.0 / 52.8, Things 32.7 / 33.1 / 33.7 (seeds 0 / 1 / 2) against 41.7 / 24.2
  (seed 0, same machine) for 1,600 steps at 32 x 32. Coarser masks cap the score: the held-out
  ground truth taken to 16 x 16 and back scores PQ 83.8 (Things 78.0; 90.9 / 87.4 at 32 x 32),
  far above what ten minutes reach. `:long` keeps the paper's half-size masks;
  `:mask_stride=N` (1, 2, 4, 8 or 16 image pixels per mask pixel) chooses;
- `train.learning_rate=3e-3` (`:long` and the video default keep 2e-3): with 16 x 16 masks and
  3,400 steps, PQ 54.1 / 53.5 / 54.6, Things 35.2 / 35.5 / 35.6 (seeds 0 / 1 / 2) against the
  51.6 / 52.0 / 52.8 above at 2e-3; 4e-3 gave 51.5 / 33.3 (seed 0);
- `cpu_devices=2`: two XLA CPU devices run the halves of each batch side by side (~30 % faster);
- one evaluation, at the end, with `eval.steps=2` DDIM steps (paper: 20): on three trained
  default runs 2 steps gave PQ 45.2 / 44.0 / 41.0 against 45.5 / 44.0 / 41.1 with 20 (seeds
  0 / 1 / 2), in a quarter of the evaluation's time; `:long` evaluates with 20.

`:size=N` (a multiple of 16, at least 32; default 64) generates the data at N x N and sets the
model's images to N x N and its masks to N/mask_stride, everything else unchanged. At 32 with
half-size masks (`:size=32,mask_stride=2`) a step costs a quarter of the FLOPs of the 64 x 64
model with 32 x 32 masks (2.35 against 9.64 GFLOP) and runs 3.8x as fast on one CPU core, for a
harder task (things 5-11 pixels across): benchmarks/ablations.py uses it to afford 4x the steps.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, runlocal=False, long=False, size=64, mask_stride=0)
  c = common.base_config()
  c.dataset.name = 'synthetic_shapes'
  # Masks a quarter of the image side (the paper: half), `:long` half; `:mask_stride=N` chooses.
  mask_stride = args.mask_stride or (2 if args.long else 4)
  common.shapes_recipe(c, args.size, mask_stride)   # K = 8, raster ids, the slimmer model, batch 8
  c.dataset.num_train = 4096
  c.dataset.num_eval = 256

  c.diffusion.mask_weight_p = 0.7        # paper: 0.2
  c.diffusion.class_loss_weight = 2.0    # paper: 1.0

  c.train.num_steps = 3400               # at 16² masks, the wall time 1,600 steps took at 32²
  c.train.checkpoint_every_steps = 1700
  c.train.learning_rate = 3e-3           # 2e-3 in shapes_recipe (and :long)

  c.eval.batch_size = 64
  c.eval.every_steps = c.train.num_steps   # one evaluation, at the end
  c.eval.steps = 2                       # DDIM steps: 2 score as 20 do here, at a tenth the time
  c.eval.min_pixels = 8
  c.eval.num_visualizations = 8

  if args.long:
    c.train.learning_rate = 2e-3
    c.train.num_steps = 9000
    c.train.checkpoint_every_steps = 1000
    c.eval.every_steps = 3000
    c.eval.steps = 20
  if args.runlocal:
    c.dataset.num_train = 64
    c.dataset.num_eval = 8
    c.train.batch_size = 4
    c.train.num_steps = 6
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 3
    c.eval.every_steps = 3
    c.eval.batch_size = 4
    c.eval.steps = 2
    c.eval.num_visualizations = 2
  return c
