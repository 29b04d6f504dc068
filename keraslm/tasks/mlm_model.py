"""The masked language model: the Transformer encoder under keras-nlp's MaskedLMHead."""

import keras
import keras_nlp

from keraslm.backbones.activations import gelu_tanh


def build_masked_language_model(backbone, vocabulary_size):
    """{token_ids (B, T), mask_positions (B, P)} -> logits (B, P, vocabulary_size), float32.

    The head predicts the original token at each masked position; its output projection is the
    backbone's token embedding, transposed (BERT's tied weights), so the head adds only a small
    dense layer, a norm and a bias. The head is named "mlm_head"; a classifier fine-tuned from
    this model keeps the backbone and drops the head.
    """
    # === Layers ===
    head = keras_nlp.layers.MaskedLMHead(
        vocabulary_size=vocabulary_size,
        token_embedding=backbone.get_layer("embedding").token_embedding,
        intermediate_activation=gelu_tanh,
        name="mlm_head",
    )

    # === Functional Model ===
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    mask_positions = keras.Input(shape=(None,), dtype="int32", name="mask_positions")
    hidden = backbone(token_ids)  # (B, T, H)
    logits = head(hidden, mask_positions=mask_positions)  # (B, P, vocabulary_size)
    # float32 logits keep the softmax stable under mixed precision.
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model({"token_ids": token_ids, "mask_positions": mask_positions}, logits, name="masked_language_model")
