"""The language model: a causal backbone under a next-token head."""

import keras


def build_language_model(backbone, vocabulary_size):
    """Token ids (B, T) -> next-token logits (B, T, vocabulary_size), float32.

    The head is one Dense layer named "logits" (keraslm.steppers reads it); float32 logits keep
    the softmax stable under mixed precision.
    """
    # === Layers ===
    to_logits = keras.layers.Dense(vocabulary_size, dtype="float32", name="logits")

    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    hidden = backbone(token_ids)  # (B, T, H)
    logits = to_logits(hidden)  # (B, T, vocabulary_size)
    return keras.Model(token_ids, logits, name="language_model")
