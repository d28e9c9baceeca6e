"""Data sources, per-example transforms and the tf.data pipeline.

A source turns a data set into decoded examples (see `pix2seq_d_jax.data.sources.Source`); the
pipeline (`pix2seq_d_jax.data.pipeline`) shards, orders, augments and batches them. Sources are
found by name in a small registry with lazy imports, so TFDS or file readers load only when used.
"""

import importlib

# name -> 'module:Class'. Imported on first use.
_REGISTRY = {
    'synthetic_shapes': 'pix2seq_d_jax.data.sources:SyntheticShapes',
    'moving_shapes': 'pix2seq_d_jax.data.sources:MovingShapes',
    'coco_panoptic_tfds': 'pix2seq_d_jax.data.coco:CocoPanopticTfds',
    'coco_panoptic_folder': 'pix2seq_d_jax.data.folder:CocoPanopticFolder',
    'davis_folder': 'pix2seq_d_jax.data.davis:DavisFolder',
    'davis_tfds': 'pix2seq_d_jax.data.davis:DavisTfds',
}


def source_names() -> list[str]:
  return sorted(_REGISTRY)


def get_source(dataset_config):
  """Builds the source named by `dataset_config.name` (a ConfigDict `config.dataset`)."""
  name = dataset_config.name
  if name not in _REGISTRY:
    raise ValueError(f'config.dataset.name={name!r} is not a known data source; valid: '
                     f'{", ".join(source_names())}.')
  module_name, _, cls_name = _REGISTRY[name].partition(':')
  return getattr(importlib.import_module(module_name), cls_name)(dataset_config)
