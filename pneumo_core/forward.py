"""A model's forward pass compiled once, with preprocessing inside the graph.

Calling a Keras model eagerly costs several milliseconds of Python per call, most of a small
model's latency (and 3x the per-image cost of a batch for Xception, see ``bench``). Here the
model and its registry preprocessing are traced once into a ``tf.function`` with a fixed input
signature (any batch size of uint8 squares), so a single image costs little more than its share
of a batch. Thread-safe: every session and worker shares one compiled function.

Usage:
    forward = compiled_forward(model, spec)
    probabilities = forward(squares)            # (n, size, size) uint8 -> (n, 1) float32
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pneumo_core.registry import ModelSpec


def compiled_forward(model, spec: ModelSpec) -> Callable[[np.ndarray], np.ndarray | list[np.ndarray]]:
    """``squares -> outputs`` for ``(n, size, size)`` uint8 squares, traced once for every batch size.

    Args:
        model: A Keras model taking the spec's preprocessed input (one or several outputs).
        spec: The model's registry entry (input size and preprocessing).

    Returns:
        A function returning NumPy arrays: one array, or a list for a multi-output model.
    """
    import tensorflow as tf

    size = spec.input_size
    signature = [tf.TensorSpec(shape=[None, size, size], dtype=tf.uint8, name="squares")]

    # No autograph: it parses source with ast, and concurrent ast.parse can fail in CPython 3.11.7.
    @tf.function(input_signature=signature, autograph=False)
    def forward(squares):
        return model(spec.preprocess(squares[..., None]), training=False)

    def run(squares: np.ndarray) -> np.ndarray | list[np.ndarray]:
        if squares.ndim != 3 or squares.shape[1:] != (size, size) or squares.dtype != np.uint8:
            raise ValueError(f"{spec.name} expects uint8 squares of shape (n, {size}, {size}), got {squares.shape}.")
        outputs = forward(tf.convert_to_tensor(squares))
        return [output.numpy() for output in outputs] if isinstance(outputs, list | tuple) else outputs.numpy()

    return run
