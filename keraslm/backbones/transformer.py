"""Transformer backbones from keras-nlp layers: token ids -> hidden states.

causal=True, the decoder (language models): `TransformerDecoder` blocks without cross-attention,
each position attending to its past. causal=False, the encoder (classifiers): `TransformerEncoder`
blocks with bidirectional attention and a padding mask, so [PAD] (id 0) positions are never
attended to. Both are pre-norm (GPT-2 / nanoGPT), which trains small models stably without
learning-rate tricks, and end in a LayerNormalization.
"""

import keras
import keras_nlp

from keraslm.backbones.activations import gelu_tanh


def build_transformer_backbone(
    vocabulary_size,
    sequence_length,
    hidden_dim,
    intermediate_dim,
    num_layers,
    num_heads,
    dropout=0.0,
    causal=True,
):
    """Token ids (B, T <= sequence_length) -> hidden states (B, T, hidden_dim).

    Layer names ("embedding", "decoder_<i>", "final_norm") are what keraslm.steppers reads.
    """
    # === Layers ===
    embedding = keras_nlp.layers.TokenAndPositionEmbedding(
        vocabulary_size=vocabulary_size,
        sequence_length=sequence_length,
        embedding_dim=hidden_dim,
        name="embedding",
    )
    embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout") if not causal else None
    block = keras_nlp.layers.TransformerDecoder if causal else keras_nlp.layers.TransformerEncoder
    blocks = [
        block(
            intermediate_dim=intermediate_dim,
            num_heads=num_heads,
            dropout=dropout,
            activation=gelu_tanh,
            normalize_first=True,
            name=f"{'decoder' if causal else 'encoder'}_{index}",
        )
        for index in range(num_layers)
    ]
    final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")

    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = embedding(token_ids)  # (B, T, hidden_dim)
    if causal:
        for decoder in blocks:
            x = decoder(x)  # causal self-attention; no encoder sequence
    else:
        # An explicit padding mask, as keras-hub's BERT backbone passes it: a Keras mask attached
        # by the embedding would be dropped (with a warning) by the position embedding.
        padding_mask = keras.ops.not_equal(token_ids, 0)  # (B, T)
        x = embedding_dropout(x)
        for encoder in blocks:
            x = encoder(x, padding_mask=padding_mask)
    hidden = final_norm(x)  # (B, T, hidden_dim)
    return keras.Model(token_ids, hidden, name="backbone")
