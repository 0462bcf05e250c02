"""Batch inference: model inputs, the shared Keras model handler, prediction rows."""
