"""Installs the pix2seq_d_jax package. The pinned set CI uses is requirements-lock.txt."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (_HERE / name).read_text().splitlines()
  return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


_TEST = ("pytest", "hypothesis")
_ALL = _requirements("requirements.txt")

setuptools.setup(
    name="pix2seq_d_jax",
    version="0.1.0",
    description="Pix2Seq-D: panoptic segmentation of images and videos with bit diffusion, in JAX/Flax.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["pix2seq_d_jax", "pix2seq_d_jax.*"]),
    install_requires=[r for r in _ALL if not r.startswith(_TEST)],
    extras_require={"test": [r for r in _ALL if r.startswith(_TEST)]},
)
