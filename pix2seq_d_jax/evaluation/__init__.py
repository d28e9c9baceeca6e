"""pix2seq_d_jax.evaluation."""
