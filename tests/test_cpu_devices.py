"""config.cpu_devices: main splits a CPU-only host into several XLA devices before JAX starts."""

import os
import subprocess
import sys

import pytest

from pix2seq_d_jax import main as main_lib

FLAG = '--xla_force_host_platform_device_count'


def test_split_cpu_adds_the_flag_and_keeps_other_flags():
  env = {'XLA_FLAGS': '--xla_cpu_enable_fast_math=false'}
  main_lib.split_cpu(2, env)
  assert env['XLA_FLAGS'] == f'--xla_cpu_enable_fast_math=false {FLAG}=2'
  env = {}
  main_lib.split_cpu(4, env)
  assert env == {'XLA_FLAGS': f'{FLAG}=4'}


def test_split_cpu_leaves_defaults_and_user_flags_alone():
  for count in (0, 1):
    env = {}
    main_lib.split_cpu(count, env)
    assert env == {}
  env = {'XLA_FLAGS': f'{FLAG}=8'}
  main_lib.split_cpu(2, env)
  assert env == {'XLA_FLAGS': f'{FLAG}=8'}
  with pytest.raises(ValueError, match='cpu_devices'):
    main_lib.split_cpu(-1, {})


def test_split_cpu_before_jax_starts_gives_that_many_devices():
  code = ('from pix2seq_d_jax import main; main.split_cpu(2); import jax; '
          'print(jax.device_count(), jax.devices()[0].platform)')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       timeout=120, check=True)
  assert out.stdout.split()[-2:] == ['2', 'cpu']
