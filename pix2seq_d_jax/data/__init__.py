"""pix2seq_d_jax.data."""
