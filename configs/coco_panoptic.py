"""COCO panoptic, the paper model (ResNet-50-C4, 94.5 M parameters) and recipe.

  python -m pix2seq_d_jax.main --config=configs/coco_panoptic.py:stage=low --workdir=DIR
  python -m pix2seq_d_jax.main --config=configs/coco_panoptic.py:stage=high --workdir=DIR2 \
      --config.train.init_from=DIR

Paper result: 50.3 PQ on COCO val2017 with 20 sampling steps (Chen et al. 2022). Not reproduced by
this project yet (no TPU pod was available); see README "Expected results".
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, stage='high', runlocal=False)
  c = common.base_config()
  c.dataset.name = 'coco_panoptic_tfds'
  if args.stage == 'low':
    c.train.batch_size = 512
    c.train.num_epochs = 800.0
    c.train.learning_rate = 1e-4
    c.train.warmup_epochs = 5.0
  elif args.stage != 'high':
    raise ValueError(f"coco_panoptic.py: stage={args.stage!r}; valid: 'low', 'high'.")
  if args.runlocal:
    c.model.image_size = (64, 64)
    c.model.mask_size = (32, 32)
    c.train.batch_size = 2
    c.train.num_steps = 2
    c.eval.batch_size = 2
  return c
