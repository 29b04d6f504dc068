"""Embedding -> LSTM x num_layers -> Dense language model, and its stateful next-token step."""

import keras
import tensorflow as tf


def build_lstm_lm(vocabulary_size, hidden_dim, num_layers, dropout=0.0, use_cudnn="auto"):
    """Token ids (B, T) -> next-token logits (B, T, vocabulary_size).

    The LSTM layers keep Keras' defaults (tanh, sigmoid, no recurrent dropout, no unroll, bias):
    that configuration runs on the fused cuDNN kernel on a GPU. Dropout sits between layers
    rather than inside the LSTM for the same reason.
    """
    # === Layers ===
    embedding = keras.layers.Embedding(vocabulary_size, hidden_dim, name="embedding")
    # return_state lets generation start from the state left by the prompt.
    recurrent = [
        keras.layers.LSTM(
            hidden_dim, return_sequences=True, return_state=True, use_cudnn=use_cudnn, name=f"lstm_{index}"
        )
        for index in range(num_layers)
    ]
    to_logits = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = embedding(token_ids)  # (B, T, hidden_dim)
    for layer in recurrent:
        x, _, _ = layer(x)  # (B, T, hidden_dim)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    logits = to_logits(x)  # (B, T, vocabulary_size)
    return keras.Model(token_ids, logits, name="lstm_lm")


class LSTMStepper:
    """Next-token logits from the LSTM state: one cell step per token, no recomputation."""

    def __init__(self, model, num_layers):
        self.embedding = model.get_layer("embedding")
        self.recurrent = [model.get_layer(f"lstm_{index}") for index in range(num_layers)]
        self.to_logits = model.get_layer("logits")
        self.vocabulary_size = self.to_logits.units

    def initial_state(self, tokens, start):
        """State [(h, c) per layer] after reading tokens[:, : start - 1]."""
        batch_size = tf.shape(tokens)[0]

        def read_prefix():
            x = self.embedding(tokens[:, : start - 1])
            states = []
            for layer in self.recurrent:
                x, h, c = layer(x, training=False)
                states.append((h, c))
            return states

        def zeros():
            return [
                (
                    tf.zeros([batch_size, layer.cell.units], layer.compute_dtype),
                    tf.zeros([batch_size, layer.cell.units], layer.compute_dtype),
                )
                for layer in self.recurrent
            ]

        # An LSTM over zero steps is not defined, so a one-token prefix starts from zeros.
        return tf.cond(start > 1, read_prefix, zeros)

    def step(self, state, tokens, position, small_batch=False):
        """Reads tokens[:, position - 1]; returns logits (B, V) for `position` and the new state."""
        del small_batch  # One formulation serves every batch size.
        x = self.embedding(tokens[:, position - 1])  # (B, hidden_dim)
        new_state = []
        for layer, (h, c) in zip(self.recurrent, state):
            x, (h, c) = layer.cell(x, [h, c], training=False)
            new_state.append((h, c))
        return self.to_logits(x), new_state
