"""Triton compatibility: serve a Triton model repository (``config.pbtxt``) as it is."""
