#!/usr/bin/env python3
"""Writes tests/data/torchvision_resnet50/ (run once, by hand, where torch and torchvision are
installed; nothing else of this project is needed).

torchvision's `resnet50` gets random weights and BatchNorm statistics drawn by `random_weights`
from the names and shapes of its state dict (numpy, seeded); the names and shapes go to
`state_dict.json`, its stage outputs (`layer2` = C3, `layer3` = C4) in eval mode for fixed
images to `features.npz`. tests/test_torchvision_import.py redraws the same weights, writes them
as safetensors and checks our backbone reproduces the features on the imported file (the 98 MB
of weights are never committed).

  python tools/make_torchvision_fixture.py --out=tests/data/torchvision_resnet50
"""

import argparse
import json
import pathlib

import numpy as np

SEED = 0
IMAGES = (2, 64, 96, 3)   # NHWC in [0, 1]


def random_weights(spec, seed=SEED):
  """{name: float32 / int64 array} for [(name, shape, dtype)] in order: conv kernels
  ~ N(0, 1/fan_in), BatchNorm scales in [0.5, 1.5], shifts ~ N(0, 0.1), running means
  ~ N(0, 0.3), running variances in [0.5, 2]."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape, dtype in spec:
    shape = tuple(shape)
    if dtype == 'int64':
      out[name] = np.zeros(shape, np.int64)
    elif name.endswith('running_var'):
      out[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif name.endswith('running_mean'):
      out[name] = (0.3 * rng.standard_normal(shape, np.float32))
    elif len(shape) > 1:
      fan_in = int(np.prod(shape[1:]))
      out[name] = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(fan_in))
    elif name.endswith('weight'):
      out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      out[name] = (0.1 * rng.standard_normal(shape, np.float32))
  return out


def images():
  return np.random.default_rng(SEED + 1).uniform(0, 1, IMAGES).astype(np.float32)


def import_torchvision():
  """torchvision; where its compiled ops do not load against the installed torch (a CPU torch
  with a torchvision wheel built for another one), their fake-kernel registrations are skipped:
  `resnet50` is plain PyTorch and needs none of them."""
  import torch  # pylint: disable=g-import-not-at-top
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
  except RuntimeError:
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda fn: fn)
    try:
      import torchvision  # pylint: disable=g-import-not-at-top,redefined-outer-name
    finally:
      torch.library.register_fake = register_fake
  return torch, torchvision


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', default='tests/data/torchvision_resnet50')
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  torch, torchvision = import_torchvision()
  model = torchvision.models.resnet50(weights=None).eval()
  spec = [(k, list(v.shape), str(v.dtype).replace('torch.', ''))
          for k, v in model.state_dict().items()]
  weights = random_weights(spec)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  x = torch.from_numpy(images()).permute(0, 3, 1, 2)
  with torch.no_grad():
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    c3 = model.layer2(model.layer1(x))
    c4 = model.layer3(c3)
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  np.savez(out / 'features.npz', c3=nhwc(c3), c4=nhwc(c4))
  (out / 'state_dict.json').write_text(json.dumps(
      {'torch': torch.__version__, 'torchvision': torchvision.__version__, 'seed': SEED,
       'state_dict': spec}, indent=0))
  print('wrote', out, {k: v.shape for k, v in np.load(out / 'features.npz').items()})


if __name__ == '__main__':
  main()
