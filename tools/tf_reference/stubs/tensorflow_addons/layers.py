"""Stand-in for `tensorflow_addons.layers`."""
import tensorflow as tf


# pylint: disable-next=invalid-name
def GroupNormalization(groups=32, axis=-1, epsilon=1e-3, center=True, scale=True,
                       beta_initializer='zeros', gamma_initializer='ones', **kwargs):
  """tfa.layers.GroupNormalization -> tf.keras (tf-keras 2.x) GroupNormalization."""
  return tf.keras.layers.GroupNormalization(
      groups=groups, axis=axis, epsilon=epsilon, center=center, scale=scale,
      beta_initializer=beta_initializer, gamma_initializer=gamma_initializer, **kwargs)
