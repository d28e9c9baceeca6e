"""Importers of pretrained weights into Pix2Seq-D variables.

  tf_pix2seq           the authors' TensorFlow checkpoints (Pix2Seq-D, Pix2Seq detection).
  torchvision_resnet   ImageNet ResNet-50 weights in safetensors format (torchvision / timm names).

Command line (writes a workdir): python -m pix2seq_d_jax.convert --help
"""
