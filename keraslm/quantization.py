"""int8 weights for exports (keraslm-export --quantize=int8).

Dense, EinsumDense and Embedding layers (keras-nlp's attention, feed-forward and embedding layers
are built from them) use Keras 3's own `Model.quantize("int8")`: each kernel becomes an int8
variable with one float32 scale per output channel (abs-max), and the layer's call quantizes its
input on the fly and multiplies in int8.

Keras has no quantization for LSTM layers, whose kernels are most of an LSTM classifier's
weights after the embedding, so they are quantized here in the same scheme: the cell's kernel
and recurrent kernel become int8 variables with per-output-column scales, and the layer
dequantizes them once per call, before its time loop (weight-only int8: the matmuls run in
float32, the stored weights and the file are int8).

Readers that bypass the layers' calls (the cached LM decoding step folds the weights into its
own matmuls) take their tensors from `dense_kernel` / `embedding_table`, which dequantize the
int8 variables, so they read the quantized weights and never a float copy.
"""

import contextlib
import functools
import warnings

import keras
import numpy as np
import tensorflow as tf


def quantize_model(model):
    """Quantizes a restored model's weights to int8 in place; returns the model."""
    with warnings.catch_warnings():
        # Keras warns once per layer that has no `quantize` method (norms, dropout, inputs):
        # those stay float32 by design.
        warnings.simplefilter("ignore")
        model.quantize("int8")
    for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
        if isinstance(layer, keras.layers.LSTM) and not isinstance(layer, _Int8LSTM):
            _quantize_lstm(layer)
    return model


def is_int8(layer):
    """Whether a Dense/EinsumDense/Embedding layer holds int8 weights."""
    return getattr(layer, "quantization_mode", None) == "int8"


def dense_kernel(layer):
    """The float32 kernel of a Dense or EinsumDense layer, dequantized if it is int8."""
    if not is_int8(layer):
        return tf.convert_to_tensor(layer.kernel)
    kernel = tf.cast(tf.convert_to_tensor(layer.kernel), tf.float32)
    scale = tf.convert_to_tensor(layer.kernel_scale)
    reduced = getattr(layer, "_kernel_reduced_axes", None)  # EinsumDense: the input axes.
    if reduced is not None:
        # EinsumDense keeps its scale with extra unit axes (e.g. (1, 1, heads, head_dim) for a
        # (hidden, heads, head_dim) kernel): one scale per output position, 1 on reduced axes.
        shape = [1 if axis in reduced else size for axis, size in enumerate(kernel.shape)]
        scale = tf.reshape(scale, shape)
    return kernel / scale


def embedding_table(layer):
    """The float32 table of an Embedding layer, dequantized (one scale per row) if it is int8."""
    if not is_int8(layer):
        return tf.convert_to_tensor(layer.embeddings)
    table = tf.cast(tf.convert_to_tensor(layer.embeddings), tf.float32)
    return table / tf.convert_to_tensor(layer.embeddings_scale)[:, None]


class _Int8LSTMCell(keras.layers.LSTMCell):
    """An LSTMCell whose kernels are read from int8 variables and per-column scales.

    Instances are made by changing the class of a built LSTMCell (`_quantize_lstm`), never
    constructed; `kernel` and `recurrent_kernel` are properties over the int8 variables.
    """

    @property
    def kernel(self):
        cached = getattr(self, "_dequantized", None)
        return cached[0] if cached is not None else _dequantize(self.kernel_int8, self.kernel_scale)

    @property
    def recurrent_kernel(self):
        cached = getattr(self, "_dequantized", None)
        return cached[1] if cached is not None else _dequantize(self.recurrent_kernel_int8, self.recurrent_kernel_scale)


class _Int8LSTM(keras.layers.LSTM):
    """An LSTM layer over an _Int8LSTMCell: dequantizes the kernels once per call.

    Without this, the cell would dequantize them at every time step inside the loop.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        cell._dequantized = (  # pylint: disable=protected-access
            _dequantize(cell.kernel_int8, cell.kernel_scale),
            _dequantize(cell.recurrent_kernel_int8, cell.recurrent_kernel_scale),
        )
        try:
            return super().inner_loop(sequences, initial_state, mask, training=training)
        finally:
            cell._dequantized = None  # pylint: disable=protected-access


def _dequantize(quantized, scale):
    return tf.cast(tf.convert_to_tensor(quantized), tf.float32) / tf.convert_to_tensor(scale)


def _quantize_lstm(layer):
    """Replaces a built LSTM layer's float kernels with int8 ones (abs-max per output column)."""
    cell = layer.cell
    if layer.compute_dtype != "float32":
        raise ValueError(f"int8 quantization expects a float32 LSTM, not {layer.compute_dtype}")
    # The cell's tracker refuses new variables once built; Keras' own quantize unlocks it too.
    cell._tracker.unlock()  # pylint: disable=protected-access
    for name in ("kernel", "recurrent_kernel"):
        variable = getattr(cell, name)
        value = np.asarray(variable.numpy(), np.float32)  # (input or units, 4 * units)
        scale = 127.0 / (np.max(np.abs(value), axis=0) + keras.config.epsilon())
        quantized = np.clip(np.round(value * scale), -127, 127).astype(np.int8)
        cell._untrack_variable(variable)  # pylint: disable=protected-access
        # The float variable is gone from the layer (and from every export of it).
        del cell.__dict__[name]
        int8_variable = cell.add_weight(name=name, shape=value.shape, initializer="zeros", dtype="int8", trainable=False)
        int8_variable.assign(quantized)
        scale_variable = cell.add_weight(name=f"{name}_scale", shape=scale.shape, initializer="ones", trainable=False)
        scale_variable.assign(scale.astype(np.float32))
        object.__setattr__(cell, f"{name}_int8", int8_variable)
        object.__setattr__(cell, f"{name}_scale", scale_variable)
    cell._tracker.lock()  # pylint: disable=protected-access
    cell.__class__ = _Int8LSTMCell
    layer.__class__ = _Int8LSTM
    # The cuDNN kernel reads float variables; an int8 layer always runs Keras' own loop.
    layer.use_cudnn = False


@contextlib.contextmanager
def forward_only():
    """Traces Keras' int8 layers without their custom gradients, for exports.

    Each int8 Dense/EinsumDense call wraps its matmul in `keras.ops.custom_gradient` (autodiff
    cannot go through int8 weights), and every such call traced into a SavedModel brings a
    gradient function along: 219 of them (0.6 MB) and larger graphs for the tinyshakespeare
    LM, whose int8 export's saved_model.pb grew from 3.6 to 5.6 MB. An export never trains, so
    while it is traced `custom_gradient` returns the forward value alone. The layers look the
    decorator up on `keras.src.ops` at call time, which is the one name replaced here.
    """
    from keras.src import ops  # pylint: disable=import-outside-toplevel

    original = ops.custom_gradient

    def without_gradient(function):
        @functools.wraps(function)
        def forward(*args, **kwargs):
            value, _ = function(*args, **kwargs)
            return value

        return forward

    ops.custom_gradient = without_gradient
    try:
        yield
    finally:
        ops.custom_gradient = original

