"""The scorers: PQ of COCO panoptic files (`panoptic`), DAVIS J&F (`vos`) and pictures
(`visualize`). They read and write files through pix2seq_d_jax/formats and import no model; the
evaluation loops that sample a model are pix2seq_d_jax/eval_panoptic.py and eval_vos.py."""
