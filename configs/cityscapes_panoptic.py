"""Cityscapes panoptic from COCO-panoptic-format files (docs/decisions.md §11).

Convert the fine annotations once with cityscapesscripts' csCreatePanopticImgs:

  CITYSCAPES_DATASET=/data/cityscapes csCreatePanopticImgs --use-train-id --set-names val train

It reads $CITYSCAPES_DATASET/gtFine/{val,train}/*/*_instanceIds.png and writes, next to them in
$CITYSCAPES_DATASET/gtFine/ (or --output-folder):
  cityscapes_panoptic_{train,val}_trainId.json   images, annotations, 19 categories (8 things);
  cityscapes_panoptic_{train,val}_trainId/       the RGB panoptic PNGs (1024x2048).
Without --use-train-id the files lack the '_trainId' suffix and the categories carry Cityscapes
label ids (7..33) instead of train ids (0..18); either works here, since categories come from the
JSON (class = position in its list + 1). (--set-names skips 'test', which has no annotations.)
Image ids are names ('frankfurt_000000_000294'), hashed to stable integer example ids; the JSON's
image file names ('<id>_gtFine_leftImg8bit.png') are found as leftImg8bit/<split>/<city>/
<id>_leftImg8bit.png. Then:

  G=/data/cityscapes/gtFine; L=/data/cityscapes/leftImg8bit
  python -m pix2seq_d_jax.data.check --config=configs/cityscapes_panoptic.py \
      --config.dataset.train_json=$G/cityscapes_panoptic_train_trainId.json \
      --config.dataset.train_image_dir=$L/train \
      --config.dataset.train_panoptic_dir=$G/cityscapes_panoptic_train_trainId \
      --config.dataset.eval_json=$G/cityscapes_panoptic_val_trainId.json \
      --config.dataset.eval_image_dir=$L/val \
      --config.dataset.eval_panoptic_dir=$G/cityscapes_panoptic_val_trainId
  python -m pix2seq_d_jax.main --config=configs/cityscapes_panoptic.py --workdir=DIR \
      --config.train.init_from=COCO_DIR (and the same --config.dataset.* flags)

Setting: 1024x2048 images, 512x1024 masks, 19 classes + void, K = 101, ids shuffled to 1..n as
the reference's Cityscapes loader does. The reference has no Cityscapes recipe; ours fine-tunes a
COCO checkpoint (batch 16, lr 1e-5, 100 epochs of 2975 images, zoom-in jitter [1, 2]). No result
yet. `:runlocal` is a smoke test of a small model on 64x128 images.

Memory (README "Memory on accelerators"): twice COCO's pixels, so `model.remat='blocks'` (with the
default 'auto' attention) is on: 11.0 GiB of activations per example in float32 by
`python benchmarks/memory_plan.py --config=configs/cityscapes_panoptic.py --activations`
(46.7 without remat, which fits neither target), i.e. 2 examples per GPU on 8 x H100 (~23 GiB)
or 1 per chip on a v4-32 slice (~12 GiB) in one pass.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, runlocal=False)
  c = common.base_config()
  c.dataset.name = 'coco_panoptic_folder'
  common.add_folder_keys(c)
  c.dataset.num_classes = 20              # 19 classes + void
  c.dataset.max_instances = 101
  c.dataset.object_order = 'shuffle'
  c.dataset.min_scale = 1.0
  c.dataset.max_scale = 2.0
  c.dataset.max_original_size = (1024, 2048)

  c.model.image_size = (1024, 2048)
  c.model.mask_size = (512, 1024)
  c.model.remat = 'blocks'                # fits an accelerator (docstring)

  c.train.batch_size = 16
  c.train.num_epochs = 100.0
  c.train.learning_rate = 1e-5
  c.train.checkpoint_every_steps = 1860   # ~10 epochs
  c.eval.batch_size = 4
  c.eval.every_steps = 3720
  if args.runlocal:
    common.runlocal(c, image_size=(64, 128), mask_size=(32, 64))
  return c
