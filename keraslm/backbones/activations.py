"""Activations shared by the Transformer backbones."""

import keras


def gelu_tanh(x):
    """GELU with the tanh approximation (GPT-2's): on CPU it costs half of the erf form."""
    return keras.activations.gelu(x, approximate=True)
