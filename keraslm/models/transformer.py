"""Decoder-only Transformer language model from keras-nlp layers, and its next-token step."""

import keras
import keras_nlp
import tensorflow as tf


def build_transformer_lm(
    vocabulary_size,
    sequence_length,
    hidden_dim,
    intermediate_dim,
    num_layers,
    num_heads,
    dropout=0.0,
):
    """Token ids (B, T <= sequence_length) -> next-token logits (B, T, vocabulary_size)."""
    # === Layers ===
    embedding = keras_nlp.layers.TokenAndPositionEmbedding(
        vocabulary_size=vocabulary_size,
        sequence_length=sequence_length,
        embedding_dim=hidden_dim,
        name="embedding",
    )
    # Pre-norm blocks (GPT-2 / nanoGPT): train stably without learning-rate tricks.
    decoders = [
        keras_nlp.layers.TransformerDecoder(
            intermediate_dim=intermediate_dim,
            num_heads=num_heads,
            dropout=dropout,
            activation="gelu",
            normalize_first=True,
            name=f"decoder_{index}",
        )
        for index in range(num_layers)
    ]
    final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
    # float32 logits keep the softmax stable under mixed precision.
    to_logits = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = embedding(token_ids)  # (B, T, hidden_dim)
    for decoder in decoders:
        x = decoder(x)  # causal self-attention; no encoder sequence
    logits = to_logits(final_norm(x))  # (B, T, vocabulary_size)
    return keras.Model(token_ids, logits, name="transformer_lm")


class TransformerStepper:
    """Next-token logits by re-running the model on the last sequence_length tokens."""

    def __init__(self, model, sequence_length):
        self.model = model
        self.sequence_length = sequence_length

    def initial_state(self, tokens, start):
        del tokens, start  # No state: every step sees its whole window.
        return ()

    def step(self, state, tokens, position):
        """Logits (B, V) for `position` from tokens[:, position - sequence_length : position]."""
        window_start = tf.maximum(0, position - self.sequence_length)
        window = tokens[:, window_start:position]  # (B, <= S)
        logits = self.model(window, training=False)  # (B, <= S, V)
        return logits[:, -1, :], state
