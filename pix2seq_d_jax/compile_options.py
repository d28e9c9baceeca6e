"""XLA compile options for this package's programs on a CPU; other backends keep their defaults.

`jax.jit(fn, compiler_options=...)` applies them to one program, so a process can hold programs
compiled differently, and they reach every caller of the package, not only `main`.

- `run_once()`: for a program that runs once (the initialiser): no LLVM optimisation.
- `sampler()`: for the samplers (the encoder, the DDIM decoder steps and what they feed), used by
  `Predictor`, `VideoPredictor`, the evaluators, `export.load` and benchmarks/sampling.py.

And the host facts that CPU-specific code reads: `on_cpu()`, `usable_cores()`.
"""

import functools
import logging
import os

import jax
import jax.numpy as jnp

# XLA:CPU hands convolutions to YNNPACK unless told otherwise (the default list of
# xla_cpu_experimental_ynn_fusion_type in jaxlib 0.10.2); matrix products alone keep it here.
_SAMPLER_CPU = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}


def on_cpu() -> bool:
  """Whether the default backend (the one a trace without devices named compiles for) is XLA:CPU."""
  return jax.default_backend() == 'cpu'


@functools.cache
def usable_cores() -> int:
  """The CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:   # macOS
    return os.cpu_count() or 1


def run_once() -> dict | None:
  """For a program that runs once (the initialiser): on a CPU, no LLVM optimisation, which
  compiles the shapes default's initialiser 2.4x faster (19.7 s instead of 47.4 s on a busy 2-core
  CPU; the program then runs in 0.3 s instead of 0.1 s). A few random draws differ from the
  optimised program's in the last bit (9,774 of 4.4 M, at most 9e-8): a different but equally
  random start, the same for a given seed."""
  if not on_cpu():
    return None
  return {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False}


@functools.cache
def sampler() -> dict | None:
  """For the samplers: on a CPU, convolutions run on XLA's own kernels instead of YNNPACK's.

  YNNPACK runs each convolution on one thread. The decoder the sampler repeats is a chain of
  convolutions with little to run beside each, so on a device with several cores the others
  waited; XLA's own convolution splits one across the cores. On a 2-core CPU, one XLA device
  (benchmarks/sampling.py): one decoder step of side_by_side.py's config B 0.134 -> 0.073 s, of
  configs/shapes.py (batch 32) 0.543 -> 0.330 s; pinned to one core, both 0.127 s. With as many
  devices as cores (the shapes default's evaluation on two devices) the two were alike. The
  values differ from YNNPACK's in the last bits (another summation order), not in precision.

  Returns None elsewhere, and where this jaxlib does not know the option (it is experimental):
  then with a warning, once.
  """
  if not on_cpu():
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=_SAMPLER_CPU).lower(jnp.float32(0)).compile()
  except Exception as err:  # pylint: disable=broad-exception-caught  # the backend's own type
    logging.warning('XLA does not take %s (%s); the samplers compile with its defaults.',
                    _SAMPLER_CPU, str(err).splitlines()[0])
    return None
  return dict(_SAMPLER_CPU)
