"""Stand-in for `tensorflow_addons`, which does not install on TensorFlow 2.21.

Only what the authors' `models/panoptic_diffusion.py` path touches:
  layers.GroupNormalization -> tf-keras's GroupNormalization (the same arguments)
  optimizers.LAMB           -> raises (the panoptic configs use AdamW)
"""
from tensorflow_addons import layers  # noqa: F401
from tensorflow_addons import optimizers  # noqa: F401
