"""DAVIS 2017 unsupervised video object segmentation (docs/decisions.md §12).

  python -m pix2seq_d_jax.data.check --config=configs/davis_video.py \
      --config.dataset.root=/data/DAVIS
  python -m pix2seq_d_jax.main --config=configs/davis_video.py --workdir=DIR \
      --config.dataset.root=/data/DAVIS --config.train.init_from=COCO_DIR

dataset.root is the DAVIS 2017 trainval 480p release plus the unsupervised annotations
(JPEGImages/480p, Annotations_unsupervised/480p, ImageSets/2017/{train,val}.txt); with only
Annotations/480p the semi-supervised objects are used. TFDS instead:
--config.dataset.name=davis_tfds [--config.dataset.tfds_data_dir=DIR] (semi-supervised labels).

Setting: 512x1024 images, 256x512 masks, K = 16, windows of 3 frames whose first two masks
condition the decoder (frames dropout 0.2), ids shuffled per clip, one 'object' class (see
pix2seq_d_jax/data/davis.py); batch 32, 50k steps, lr 1e-5 constant, EMA 0.99. Evaluation: whole
videos, J&F with the official unsupervised protocol. Paper: J&F 68.4 (not reproduced yet).
`:runlocal` is a smoke test of a small model on 64x128 frames.

Memory (README "Memory on accelerators"; `python benchmarks/memory_plan.py
--config=configs/davis_video.py --activations`): with the default 'auto' attention the train step
takes 11.7 GiB of activations per example in float32, so batch 32 runs in one pass without
rematerialisation: 4 per GPU on 8 x H100 (~48 GiB of 80) or 2 per chip on a v4-32 slice (~25 GiB
of 32). `--config.model.remat=blocks` brings it to 2.8 GiB where memory is tighter.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, runlocal=False)
  c = common.base_config()
  c.dataset.name = 'davis_folder'         # or 'davis_tfds'
  c.dataset.root = ''
  c.dataset.tfds_data_dir = ''
  c.dataset.shuffle_buffer = 2000         # davis_tfds: windows in the shuffle buffer
  c.dataset.num_classes = 2               # 'object' + void
  c.dataset.max_instances = 16
  c.dataset.object_order = 'shuffle'
  c.dataset.num_frames = 3
  c.dataset.frames_dropout = 0.2
  c.dataset.max_original_size = (480, 854)

  c.model.image_size = (512, 1024)
  c.model.mask_size = (256, 512)
  c.model.remat = 'none'                  # fits without it, and is faster (docstring)
  c.model.num_cond_frames = 2

  c.train.batch_size = 32
  c.train.num_steps = 50_000
  c.train.learning_rate = 1e-5
  c.train.end_lr_factor = 1.0             # constant
  c.train.warmup_steps = 0
  c.train.ema_decay = 0.99
  c.train.checkpoint_every_steps = 1000
  c.eval.batch_size = 2
  c.eval.every_steps = 5000
  c.eval.steps = 100                     # DDIM steps of the first frame (docs/spec.md §4.6)
  c.eval.steps_later = 100               # DDIM steps of every later frame
  c.eval.use_gt_cond = False             # condition on ground truth instead of own predictions
  c.eval.td = 0.0
  if args.runlocal:
    common.runlocal(c, image_size=(64, 128), mask_size=(32, 64))
    c.dataset.max_original_size = (64, 128)
    c.eval.batch_size = 1
    c.eval.steps_later = 2
  return c
