"""benchmarks/matmul_probe.py: the measured matmul rate and the achieved-rate fields."""

import importlib.util
import math

import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location('matmul_probe',
                                               REPO / 'benchmarks' / 'matmul_probe.py')
matmul_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(matmul_probe)


def test_matmul_gflops_is_a_positive_finite_rate():
  rate = matmul_probe.matmul_gflops(size=256, repeats=2)
  assert isinstance(rate, float) and math.isfinite(rate) and rate > 0
  with pytest.raises(ValueError, match='size=0'):
    matmul_probe.matmul_gflops(size=0)


def test_rate_fields():
  # 50 GFLOP in 0.5 s = 100 GFLOP/s, a quarter of a 400 GFLOP/s matmul rate.
  assert matmul_probe.rate_fields(50e9, 0.5, 400.0) == {'achieved_gflops': 100.0,
                                                        'fraction_of_matmul_rate': 0.25}
  # No probe (--matmul_size=0): the achieved rate alone.
  assert matmul_probe.rate_fields(50e9, 0.5, None) == {'achieved_gflops': 100.0,
                                                       'fraction_of_matmul_rate': None}
  # A fitted decoder step at or below zero, or FLOPs XLA did not estimate: no figures.
  for flops, seconds in ((50e9, -0.01), (50e9, 0.0), (float('nan'), 0.5)):
    assert matmul_probe.rate_fields(flops, seconds, 400.0) == {'achieved_gflops': None,
                                                               'fraction_of_matmul_rate': None}
