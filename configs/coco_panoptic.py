"""COCO panoptic, the paper model (ResNet-50-C4, 94.5 M parameters) and recipe
(docs/decisions.md §10).

  python -m pix2seq_d_jax.main --config=configs/coco_panoptic.py:stage=low --workdir=DIR
  python -m pix2seq_d_jax.main --config=configs/coco_panoptic.py:stage=high --workdir=DIR2 \
      --config.train.init_from=DIR
  python -m pix2seq_d_jax.main --config=configs/coco_panoptic.py:runlocal --workdir=/tmp/smoke

Data. By default TFDS `coco/2017_panoptic` (prepare it once with `tfds build coco/2017_panoptic`,
or point `--config.dataset.tfds_data_dir` at a prepared copy). The same files as a COCO-panoptic
folder (the official `panoptic_{train,val}2017.json` + image and PNG folders):

  python -m pix2seq_d_jax.data.check --config=configs/coco_panoptic.py:stage=low \
      --config.dataset.name=coco_panoptic_folder \
      --config.dataset.train_json=COCO/annotations/panoptic_train2017.json \
      --config.dataset.train_image_dir=COCO/train2017 \
      --config.dataset.train_panoptic_dir=COCO/annotations/panoptic_train2017 \
      --config.dataset.eval_json=COCO/annotations/panoptic_val2017.json \
      --config.dataset.eval_image_dir=COCO/val2017 \
      --config.dataset.eval_panoptic_dir=COCO/annotations/panoptic_val2017
  (then the same flags with python -m pix2seq_d_jax.main ... --workdir=DIR)

Stages: `stage=low` (batch 512, 800 epochs, lr 1e-4, 5 warm-up epochs, scale jitter [1, 3],
colour jitter 1.0) then `stage=high` (batch 16, 15 epochs, lr 1e-5, no jitter). The reference
gives both stages the 1024² image / 512² mask sizes (docs/spec.md §3.8), and so do we.
`runlocal` is a smoke test: a small model of the same architecture on 64² images.

Memory (README "Memory on accelerators"; `python benchmarks/memory_plan.py --activations`): the
shared defaults take `model.attention='auto'` (cuDNN flash attention on GPU in bfloat16, the
Pallas flash kernel on TPU, else a chunked online-softmax path for the 4,096-token sequences), and
this config adds `model.remat='blocks'` (every residual block, transformer layer, FPN block and
up-path convolution recomputed in the backward pass). Together they bring the per-example
activation estimate of the train step from 23.3 to 5.5 GiB in float32. `stage=low` runs its
batch of 512 as `train.microbatches=8` sequential parts: 4 examples per microbatch per
chip on a v4-32 slice (16 chips, 32 GiB), 8 per GPU on 8 x H100 (80 GB), each under its
memory with the state per that plan. `stage=high` (batch 16) keeps one pass (2 examples per GPU
on 8 GPUs, 1 per chip on 16). bfloat16 (`--config.model.dtype=bfloat16`) lowers the estimate
further (3.9 GiB) but stays an option until it is checked against float32 training.

Paper result: 50.3 PQ on COCO val2017 with 20 sampling steps (Chen et al. 2022). Not reproduced by
this project yet (no TPU pod was available); see README "Expected results".
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, stage='high', runlocal=False)
  c = common.base_config()
  c.dataset.name = 'coco_panoptic_tfds'   # or 'coco_panoptic_folder' (keys below)
  c.dataset.num_classes = 134             # 133 categories + void
  c.dataset.tfds_data_dir = ''            # '' = the TFDS default (~/tensorflow_datasets)
  c.dataset.shuffle_buffer = 10_000       # TFDS: examples in the shuffle buffer (per process)
  common.add_folder_keys(c)
  c.dataset.max_original_size = (640, 640)  # COCO images are at most 640 on a side
  c.model.remat = 'blocks'                # fits an accelerator (docstring)
  if args.stage == 'low':
    c.train.batch_size = 512
    c.train.num_epochs = 800.0
    c.train.learning_rate = 1e-4
    c.train.warmup_epochs = 5.0
    c.train.checkpoint_every_steps = 2310  # ~10 epochs
    c.train.microbatches = 8               # 512 = 8 x 64: fits 16 chips or 8 GPUs (docstring)
    c.dataset.min_scale = 1.0
    c.dataset.max_scale = 3.0
    c.dataset.color_jitter = 1.0
  elif args.stage != 'high':
    raise ValueError(f"coco_panoptic.py: stage={args.stage!r}; valid: 'low', 'high'.")
  if args.runlocal:
    common.runlocal(c, image_size=(64, 64), mask_size=(32, 32))
    c.dataset.shuffle_buffer = 64
    c.train.microbatches = 1
  return c
