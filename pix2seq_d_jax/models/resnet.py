"""ResNet (v1.5, post-activation) up to stage 4, "C4" (docs/spec.md §5.1).

BatchNorm statistics are computed over the whole batch the module sees. Under `jax.jit` with a
batch sharded over devices (and processes) that batch is the global one, so the statistics are
cross-device without an explicit `axis_name`, like the reference's synchronised BatchNorm.
"""

from functools import partial
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from pix2seq_d_jax.models import layers
from pix2seq_d_jax.models.layers import Dtype

_conv_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def _conv(features, kernel, stride, dtype, name=None):
  # Strided convs pad symmetrically, then VALID, as the reference (so ported weights line up).
  if stride > 1:
    pad = (kernel - 1) // 2
    padding = ((pad, kernel - 1 - pad),) * 2
  else:
    padding = 'SAME'
  return layers.Conv(features, (kernel, kernel), (stride, stride), padding=padding, use_bias=False,
                     kernel_init=_conv_init, dtype=dtype, name=name)


class Bottleneck(nn.Module):
  filters: int
  stride: int
  project: bool
  train: bool
  dtype: Dtype = jnp.float32
  frozen_bn: bool = False

  @nn.compact
  def __call__(self, x):
    norm = partial(nn.BatchNorm, use_running_average=self.frozen_bn or not self.train,
                   momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    shortcut = x
    if self.project:
      shortcut = _conv(4 * self.filters, 1, self.stride, self.dtype, 'proj_conv')(x)
      shortcut = norm(name='proj_bn')(shortcut)
    y = nn.relu(norm()(_conv(self.filters, 1, 1, self.dtype)(x)))
    y = nn.relu(norm()(_conv(self.filters, 3, self.stride, self.dtype)(y)))
    y = norm(scale_init=nn.initializers.zeros)(_conv(4 * self.filters, 1, 1, self.dtype)(y))
    return nn.relu(y + shortcut)


class ResNetC4(nn.Module):
  """Images float [B, H, W, 3] -> [C2 (stride 4), C3 (stride 8), C4 (stride 16)].

  Attributes:
    depths: bottleneck blocks per stage (ResNet-50: 3, 4, 6).
    width: filters of the first stage (64); stage i uses width * 2^i, outputs 4x that.
    stem_pool: padding of the stem's 3x3 / 2 max-pool: 'same' (the reference) or 'torch'
      (torchvision's, for parity with its features).
    remat: rematerialisation policy of each bottleneck (`layers.REMAT_POLICIES`; None = none).
    frozen_bn: normalise with the running statistics in training too and never update them
      (fine-tuning from pretrained weights at a small per-device batch); False = the paper.
  """
  depths: Sequence[int] = (3, 4, 6)
  width: int = 64
  dtype: Dtype = jnp.float32
  stem_pool: str = 'same'
  remat: str | None = None
  frozen_bn: bool = False

  @nn.compact
  def __call__(self, images, train: bool):
    x = _conv(self.width, 7, 2, self.dtype, 'stem_conv')(images.astype(self.dtype))
    x = nn.BatchNorm(use_running_average=self.frozen_bn or not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name='stem_bn')(x)
    # 'same': TF's SAME pooling of the reference (padding at the bottom / right); 'torch': one
    # pixel on every side, as torchvision's ResNet (pix2seq_d_jax/convert/torchvision_resnet.py).
    pool_pad = {'same': 'SAME', 'torch': ((1, 1), (1, 1))}.get(self.stem_pool)
    if pool_pad is None:
      raise ValueError(f"ResNetC4.stem_pool={self.stem_pool!r}; valid: 'same', 'torch'.")
    x = nn.max_pool(nn.relu(x), (3, 3), (2, 2), padding=pool_pad)
    outputs = []
    bottleneck = layers.remat_block(Bottleneck, self.remat)
    for stage, depth in enumerate(self.depths):
      for block in range(depth):
        x = bottleneck(self.width * 2**stage, stride=2 if (stage > 0 and block == 0) else 1,
                       project=block == 0, train=train, dtype=self.dtype,
                       frozen_bn=self.frozen_bn,
                       name=f'stage{stage + 1}_block{block + 1}')(x)
      outputs.append(x)
    return outputs
