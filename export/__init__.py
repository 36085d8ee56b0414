"""Deployable exports of a classifier (TorchScript, ONNX) that carry their own metadata; see :mod:`export.core`."""
