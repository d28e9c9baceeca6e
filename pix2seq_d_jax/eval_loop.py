"""What the two evaluation loops share (pix2seq_d_jax/eval_panoptic.py for images and
pix2seq_d_jax/eval_vos.py for video): the sampled examples of the evaluation split, on host.

Every process runs the jitted sampler on its shard of each batch; the results are gathered, and
process 0 alone receives the examples (and writes files).
"""

from collections.abc import Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from pix2seq_d_jax import sharding
from pix2seq_d_jax.data import pipeline

# What every example brings besides the predictions: the batch keys of the eval pipeline.
EXAMPLE_KEYS = ('label_orig', 'id', 'orig_size', 'unpadded_size', 'valid')


def sampled_examples(config: ml_collections.ConfigDict, source, mesh,
                     sample: Callable[[dict], tuple[jax.Array, jax.Array]],
                     extra_keys: Sequence[str] = ()) -> Iterator[dict]:
  """Samples the evaluation split; yields each real (not padding) example on process 0.

  Args:
    config, source, mesh: the run's config, data source and mesh.
    sample: global batch -> (class, id) int [B, ..., Hmax, Wmax] predictions at the original
      size (one jitted call per batch).
    extra_keys: more batch keys to bring to the host (e.g. 'num_frames').

  Yields (process 0 only; the other processes take part in the gathers and yield nothing):
    {'class', 'id_map', *EXAMPLE_KEYS, *extra_keys} of one example as numpy, plus 'image' (the
    model's input canvas) for the examples of the first batches that cover
    config.eval.num_visualizations examples.
  """
  e = config.eval
  ds, _ = pipeline.eval_dataset(config, source, process_index=jax.process_index(),
                                process_count=jax.process_count())
  main = jax.process_index() == 0
  for index, local in enumerate(pipeline.as_numpy(ds)):
    batch = sharding.global_batch(local, mesh)
    cls, ids = sample(batch)
    # Every process makes the same choice of what to gather: the canvases (large for long
    # clips) only for the batches that may hold pictured examples.
    keys = [*EXAMPLE_KEYS, *extra_keys]
    if index * e.batch_size < e.num_visualizations:
      keys.append('image')
    host = {'class': sharding.gather_to_host(cls), 'id_map': sharding.gather_to_host(ids)}
    host.update({k: sharding.gather_to_host(batch[k]) for k in keys})
    if not main:
      continue
    for j in np.flatnonzero(host['valid']):
      yield {k: v[j] for k, v in host.items()}
