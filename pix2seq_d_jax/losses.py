"""Training losses (docs/spec.md §3.4, §3.5)."""

import jax
import jax.numpy as jnp

from pix2seq_d_jax import bits as bits_lib


def instance_size_weights(ids: jax.Array, num_ids: int, p: float) -> jax.Array:
  """Per-pixel weights (1 / (c_k + 1))^p normalised to mean 1 per image (docs/spec.md §3.5).

  Args:
    ids: int [B, h, w] instance ids; ids >= num_ids get weight 0 (when p > 0).
    num_ids: K.
    p: exponent; p = 0 gives uniform weights.

  Returns:
    float32 [B, h, w] with mean 1 over each image.
  """
  if p == 0:
    return jnp.ones(ids.shape, jnp.float32)
  flat = ids.reshape(ids.shape[0], -1)
  valid = flat < num_ids
  safe = jnp.where(valid, flat, 0)
  # Pixels per id by a scatter-add into [B, K] (a one-hot would be [B, h w, K]).
  counts = jax.vmap(lambda i, v: jnp.zeros((num_ids,), jnp.float32).at[i].add(v))(
      safe, valid.astype(jnp.float32))                                      # [B, K]
  per_id = (1.0 / (counts + 1.0)) ** p
  u = jnp.take_along_axis(per_id, safe, axis=1) * valid
  w = u * flat.shape[1] / jnp.sum(u, axis=1, keepdims=True)
  return w.reshape(ids.shape)


def softmax_xent_loss(logits: jax.Array, masks: jax.Array, weights: jax.Array,
                      class_weight: float = 1.0):
  """Grouped softmax cross-entropy, the paper's loss (`x_softmax_xent`).

  Args:
    logits: float [B, h, w, G, 2^n] (G = channels of `masks`, n = 8).
    masks: int [B, h, w, G] target integers (class, id).
    weights: float [B, h, w] per-pixel weights.
    class_weight: weight of the class group (group 0) against 1 for the others; the loss is
      the weighted mean over groups, so 1.0 (the paper) is the plain mean.

  Returns:
    (scalar loss = weighted mean over g of the mean over (b, x) of w * CE,
     per-group mean weighted CE float32 [G]).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(logp, masks[..., None].astype(jnp.int32), axis=-1)[..., 0]
  weighted = ce * weights[..., None]
  per_group = jnp.mean(weighted, axis=(0, 1, 2))
  group_w = jnp.ones_like(per_group).at[0].set(class_weight)
  return jnp.sum(group_w * per_group) / jnp.sum(group_w), per_group


def l2_loss(x0_pred: jax.Array, x0: jax.Array, weights: jax.Array) -> jax.Array:
  """The `x` ablation: mean of w (x0 - f)^2; x0_pred float [B, h, w, C]."""
  return jnp.mean(weights[..., None] * (x0.astype(jnp.float32) - x0_pred) ** 2)


def sigmoid_xent_loss(bit_logits: jax.Array, x0: jax.Array, b: bits_lib.Scale,
                      weights: jax.Array) -> jax.Array:
  """The `x_sigmoid_xent` ablation: mean of -log(sigmoid(f x0 / b) + 1e-8) w."""
  scale = bits_lib.bit_scales(b, x0.shape[-1] // bits_lib.BITS_PER_CHANNEL)
  ll = jnp.log(jax.nn.sigmoid(bit_logits * x0 / scale) + 1e-8)
  return -jnp.mean(ll * weights[..., None])


LOSSES = bits_lib.HEADS


def diffusion_loss(out: jax.Array, masks: jax.Array, x0: jax.Array, weights: jax.Array,
                   loss: str, b: bits_lib.Scale, class_weight: float = 1.0):
  """The training loss of the chosen head.

  Args:
    out: decoder output (logits [B, h, w, G, 2^n] for softmax_xent, else [B, h, w, 16]).
    masks: int [B, h, w, 2] targets; x0: their analog bits float [B, h, w, 16].
    weights: float [B, h, w].
    loss: one of LOSSES; b: the analog bit scale.
    class_weight: softmax_xent only, the class group's weight (`softmax_xent_loss`).

  Returns:
    (scalar loss, dict of per-part losses for logging).
  """
  if loss != 'softmax_xent' and class_weight != 1.0:
    raise ValueError(f'diffusion.class_loss_weight={class_weight} needs '
                     f"diffusion.loss='softmax_xent' (the {loss!r} loss has no class group); "
                     'set it to 1.0 or change the loss.')
  if loss == 'softmax_xent':
    total, per_group = softmax_xent_loss(out, masks, weights, class_weight)
    return total, {'loss_class': per_group[0], 'loss_id': per_group[1]}
  if loss == 'l2':
    return l2_loss(out, x0, weights), {}
  if loss == 'sigmoid_xent':
    return sigmoid_xent_loss(out, x0, b, weights), {}
  raise ValueError(f'Unknown loss {loss!r}; valid: {LOSSES}.')
