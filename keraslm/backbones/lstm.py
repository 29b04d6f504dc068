"""Embedding -> LSTM stack backbone (uni- or bidirectional): token ids -> hidden states."""

import keras


def build_lstm_backbone(
    vocabulary_size,
    hidden_dim,
    num_layers,
    dropout=0.0,
    bidirectional=False,
    mask_zero=False,
    embedding_dropout=0.0,
    use_cudnn="auto",
):
    """Token ids (B, T) -> hidden states (B, T, hidden_dim, doubled if bidirectional).

    The LSTM layers keep Keras' defaults (tanh, sigmoid, no recurrent dropout, no unroll, bias):
    that configuration runs on the fused cuDNN kernel on a GPU. Dropout sits between layers
    rather than inside the LSTM for the same reason. mask_zero: [PAD] (id 0) positions are
    skipped, for batches of padded texts; a language model's windows hold no padding.
    Unidirectional layers return their state too, so that decoding (keraslm.steppers) can start
    from the state a prompt leaves; layer names ("embedding", "lstm_<i>") are what it reads.
    """
    # === Layers ===
    embedding = keras.layers.Embedding(vocabulary_size, hidden_dim, mask_zero=mask_zero, name="embedding")

    def lstm(index):
        if not bidirectional:
            return keras.layers.LSTM(
                hidden_dim, return_sequences=True, return_state=True, use_cudnn=use_cudnn, name=f"lstm_{index}"
            )
        layer = keras.layers.LSTM(hidden_dim, return_sequences=True, use_cudnn=use_cudnn, name=f"lstm_{index}")
        return keras.layers.Bidirectional(layer, name=f"bidirectional_{index}")

    recurrent = [lstm(index) for index in range(num_layers)]

    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = embedding(token_ids)  # (B, T, hidden_dim), with a mask if mask_zero
    if embedding_dropout:
        x = keras.layers.Dropout(embedding_dropout, name="embedding_dropout")(x)
    for layer in recurrent:
        x = layer(x)
        if not bidirectional:
            x = x[0]  # The sequence; the final (h, c) serve decoding only.
        if dropout:
            x = keras.layers.Dropout(dropout)(x)  # (B, T, hidden_dim or 2 * hidden_dim)
    return keras.Model(token_ids, x, name="backbone")
