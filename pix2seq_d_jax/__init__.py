"""pix2seq_d_jax: Pix2Seq-D panoptic segmentation of images and videos with bit diffusion, in JAX/Flax."""

__version__ = "0.1.0"
