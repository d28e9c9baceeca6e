"""Defaults shared by every config: the paper's Pix2Seq-D (docs/decisions.md §1).

A config file's `get_config(arg)` starts from `base_config()` and changes what its setting needs;
the helpers below it set the blocks several configs share (the small model, the synthetic-shapes
recipe, the `:runlocal` smoke test, the COCO-panoptic-folder keys), so each is written once.
Every key here is read by the code (a test checks that for every config and variant).
"""

import ml_collections


def parse_arg(arg: str | None, **defaults):
  """Parses a config argument like 'runlocal' or 'stage=high,runlocal' into a ConfigDict.

  Flags without a value become True; values are converted to the type of their default.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    if key not in out:
      raise ValueError(f'Unknown config argument {key!r} in {arg!r}; valid: {sorted(out.keys())}.')
    if not eq:
      out[key] = True
    elif isinstance(defaults[key], bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    else:
      out[key] = type(defaults[key])(value)
  return out


def base_config() -> ml_collections.ConfigDict:
  """The paper model and recipe (COCO, ResNet-50, 94.5 M parameters)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'coco_panoptic_tfds'
  c.dataset.num_classes = 134            # classes + 1 (0 = void); 8 bits allow <= 256
  c.dataset.max_instances = 101          # K: ids 1..K-1, 0 = void; <= 256
  c.dataset.object_order = 'random'      # 'random' (ids spread over 1..K-1), 'shuffle', 'none'
  c.dataset.min_scale = 1.0              # scale jitter range (docs/spec.md §3.9)
  c.dataset.max_scale = 1.0
  c.dataset.color_jitter = 0.0           # colour jitter strength
  c.dataset.flip_prob = 0.5
  c.dataset.max_original_size = (640, 640)  # evaluation ground truth is padded to this size

  c.model = ml_collections.ConfigDict()
  c.model.image_size = (1024, 1024)
  c.model.mask_size = (512, 512)
  c.model.dtype = 'float32'              # compute dtype; parameters stay float32
  # Memory (README "Memory on accelerators"): 'auto' picks cuDNN / TPU flash attention or the
  # chunked path for long sequences; remat 'blocks' recomputes each residual block and
  # transformer layer in the backward pass, keeping what `remat_policy` allows.
  c.model.attention = 'auto'             # 'auto', 'xla', 'chunked', 'cudnn', 'tpu_flash'
  c.model.remat = 'none'                 # 'none', 'blocks'
  # remat_policy: 'nothing_saveable', 'dots_saveable' or 'dots_with_no_batch_dims_saveable'
  c.model.remat_policy = 'nothing_saveable'
  c.model.conditioning = 'cat+attn'
  c.model.num_cond_frames = 0
  # norm: 'batch' (the paper) or 'frozen' (running statistics, not updated)
  c.model.backbone = ml_collections.ConfigDict({'depths': (3, 4, 6), 'width': 64,
                                                'norm': 'batch'})
  c.model.encoder = ml_collections.ConfigDict({
      'num_layers': 12, 'dim': 512, 'num_heads': 16, 'mlp_dim': 2048, 'dropout': 0.1,
      'drop_path': 0.1})
  c.model.fpn_dim = 256
  c.model.decoder = ml_collections.ConfigDict({
      'dim': 128, 'ch_multipliers': (1, 1, 2, 2), 'num_res_blocks': (1, 1, 1, 1),
      'dropout': 0.0, 'transformer_dim': 512, 'transformer_layers': 6,
      'transformer_head_dim': 64, 'transformer_mlp_dim': 2048, 'time_scaling': 1000.0,
      'head_bias': 'zero', 'head_prior_bias': -8.0})

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.b = 0.1
  c.diffusion.instance_b = 0.0           # scale of the instance-id bits; 0 = b (the paper)
  c.diffusion.train_schedule = 'cosine'
  c.diffusion.infer_schedule = 'cosine'
  c.diffusion.time_distribution = 'uniform'
  c.diffusion.loss = 'softmax_xent'      # 'softmax_xent' (paper), 'l2', 'sigmoid_xent'
  c.diffusion.mask_weight_p = 0.2
  c.diffusion.class_loss_weight = 1.0   # class group vs id group in the softmax loss; 1 = the paper
  c.diffusion.self_condition = False
  c.diffusion.self_condition_rate = 0.5

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16
  c.train.microbatches = 1               # gradient accumulation: the batch in M sequential parts
  c.train.num_steps = -1                 # -1: from num_epochs
  c.train.num_epochs = 15.0
  c.train.learning_rate = 1e-5
  c.train.warmup_steps = -1              # -1: from warmup_epochs
  c.train.warmup_epochs = 0.0
  c.train.end_lr_factor = 0.1
  c.train.weight_decay = 0.05
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.eps = 1e-8
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.999
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 2000
  c.train.keep_checkpoints = 3
  c.train.keep_every_steps = 0           # 0: keep only the last `keep_checkpoints`
  c.train.init_from = ''                 # a workdir or checkpoint to initialise from (partially)
  c.train.init_from_prefixes = ('backbone', 'encoder', 'fpn', 'decoder')

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 8
  c.eval.every_steps = 10000
  c.eval.steps = 20
  c.eval.td = 1.0
  c.eval.min_pixels = 40
  c.eval.decode = 'bits'                 # 'bits' (the reference) or 'argmax' (docs/decisions.md §5)
  c.eval.use_ema = True
  c.eval.max_examples = -1               # -1: the whole split
  c.eval.num_visualizations = 8

  c.mesh = (('data', -1), ('fsdp', 1))   # -1: the remaining devices
  # On a CPU-only host: split the CPU into this many XLA devices (0 = XLA's default of one), so
  # the data-parallel halves of a batch run side by side. No effect on GPU or TPU devices.
  c.cpu_devices = 0
  return c


def add_folder_keys(c) -> None:
  """Adds the COCO-panoptic-folder keys (docs/contracts.md §4.1), empty = not set."""
  for prefix in ('train', 'eval'):
    c.dataset[f'{prefix}_json'] = ''
    c.dataset[f'{prefix}_image_dir'] = ''
    c.dataset[f'{prefix}_panoptic_dir'] = ''


def small_model(c, fpn_dim=64, ch_multipliers=(1, 2)) -> None:
  """Sets the paper architecture at small size: 1-block stages, 64-wide 1-layer transformers."""
  c.model.backbone.depths = (1, 1, 1)
  c.model.backbone.width = 16
  c.model.encoder.num_layers = 1
  c.model.encoder.dim = 64
  c.model.encoder.num_heads = 4
  c.model.encoder.mlp_dim = 128
  c.model.fpn_dim = fpn_dim
  c.model.decoder.dim = 32
  c.model.decoder.ch_multipliers = ch_multipliers
  c.model.decoder.num_res_blocks = (1,) * len(ch_multipliers)  # one residual block a level
  c.model.decoder.transformer_dim = 64
  c.model.decoder.transformer_layers = 1
  c.model.decoder.transformer_head_dim = 32
  c.model.decoder.transformer_mlp_dim = 128


def shapes_recipe(c, size: int = 64, mask_stride: int = 2) -> None:
  """Sets the synthetic-shapes configs' shared data, model and CPU recipe (shapes.py says why):
  data and images `size` x `size`, masks `size / mask_stride` (the paper: half the image)."""
  if size < 32 or size % 16:
    raise ValueError(f'config argument size={size}: the synthetic image side must be a multiple '
                     "of 16 (the backbone's stride), at least 32; e.g. configs/shapes.py:size=32 "
                     'or :size=96.')
  if mask_stride not in (1, 2, 4, 8, 16):
    raise ValueError(f'config argument mask_stride={mask_stride}: image pixels per mask pixel '
                     'must be 1, 2, 4, 8 or 16 (the feature merge upsamples by powers of two up '
                     "to the backbone's stride 16); e.g. configs/shapes.py:mask_stride=2.")
  c.dataset.num_classes = 9              # 8 categories + void
  c.dataset.max_instances = 8            # ids 1..7: at most 7 segments per image or clip
  c.dataset.object_order = 'raster'      # ids by first appearance, not a random permutation
  c.dataset.data_seed = 0
  c.dataset.synthetic_size = size
  c.dataset.max_original_size = (size, size)

  c.model.image_size = (size, size)
  c.model.mask_size = (size // mask_stride, size // mask_stride)
  small_model(c, fpn_dim=32, ch_multipliers=(1, 1, 2))   # the slimmer decoder
  c.model.encoder.dropout = 0.0
  c.model.encoder.drop_path = 0.0
  c.model.decoder.head_bias = 'prior'

  c.train.batch_size = 8
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = 100
  c.train.ema_decay = 0.99
  c.train.log_every_steps = 50

  c.eval.decode = 'argmax'

  c.cpu_devices = 2                      # on a CPU-only host: two XLA devices, ~30 % faster


def runlocal(c, image_size, mask_size) -> None:
  """Sets the `:runlocal` smoke test of the real-data configs: the small model, 2 steps of 2."""
  small_model(c)
  c.model.image_size = image_size
  c.model.mask_size = mask_size
  c.train.batch_size = 2
  c.train.num_steps = 2
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 2
  c.eval.batch_size = 2
  c.eval.steps = 2
  c.eval.every_steps = 2
  c.eval.num_visualizations = 1
