"""Stand-in for `tensorflow_addons.optimizers`."""


def LAMB(*args, **kwargs):  # pylint: disable=invalid-name
  raise NotImplementedError(
      'tensorflow_addons stand-in: LAMB is not available (the panoptic configs use AdamW).')
