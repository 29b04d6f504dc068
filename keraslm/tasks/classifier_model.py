"""The classification head over a backbone: masked mean + max (+ last) pooling -> dropout -> Dense."""

import keras


class MaskedPooling(keras.layers.Layer):
    """(hidden (B, T, H), mask (B, T)) -> concat(mean, max[, last]) over the unmasked positions.

    Mean pooling keeps the evidence of the whole text; max pooling the single strongest feature,
    which is what decides short sentiment phrases ("not good"). Both ignore [PAD]. last=True adds
    the state at the text's last token (B, 3H in all): for a causal backbone it is the only state
    that has read the whole text (ULMFiT's concat pooling); texts are padded on the right.
    """

    def __init__(self, last=False, **kwargs):
        super().__init__(**kwargs)
        self.last = last
        # The mask arrives as an explicit input; the one Keras attaches to `hidden` is consumed.
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, hidden, mask):
        mask = keras.ops.cast(mask, hidden.dtype)[:, :, None]  # (B, T, 1)
        count = keras.ops.sum(mask, axis=1)  # (B, 1)
        mean = keras.ops.sum(hidden * mask, axis=1) / keras.ops.maximum(count, 1.0)  # (B, H)
        # Padded positions get a large negative value so they never win the max.
        maximum = keras.ops.max(hidden * mask - 1e4 * (1.0 - mask), axis=1)  # (B, H)
        # A text with no tokens (an empty string) pools to zeros, so the head's bias decides;
        # its max would otherwise be -1e4 everywhere and the logits extreme.
        maximum = keras.ops.where(count > 0, maximum, keras.ops.zeros_like(maximum))
        pooled = [mean, maximum]
        if self.last:
            # The last unmasked position (right padding): count - 1; an empty text gets zeros.
            index = keras.ops.cast(keras.ops.maximum(count - 1.0, 0.0), "int32")[:, :, None]  # (B, 1, 1)
            last = keras.ops.take_along_axis(hidden, index, axis=1)[:, 0, :]  # (B, H)
            pooled.append(keras.ops.where(count > 0, last, keras.ops.zeros_like(last)))
        return keras.ops.concatenate(pooled, axis=-1)

    def get_config(self):
        return {**super().get_config(), "last": self.last}


def build_classifier(backbone, num_classes, dropout=0.0, causal=False):
    """Token ids (B, T), 0 = padding -> class logits (B, num_classes), float32.

    causal: the backbone reads left to right only (fine-tuned from a language model), so the
    pooling adds the last token's state.
    """
    # === Layers ===
    pooling = MaskedPooling(last=causal, name="pooling")
    head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
    to_logits = keras.layers.Dense(num_classes, dtype="float32", name="classifier")

    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    hidden = backbone(token_ids)  # (B, T, H)
    mask = keras.ops.not_equal(token_ids, 0)  # (B, T)
    logits = to_logits(head_dropout(pooling(hidden, mask)))  # (B, num_classes)
    return keras.Model(token_ids, logits, name="classifier")
