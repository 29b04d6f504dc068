"""The classifier's SavedModel root: raw strings in, label names and softmax scores out.

  serving_default: text (string [B]) -> label (string [B]), label_id (int32 [B]),
                   scores (float32 [B, num_classes], softmax in the order of the export's labels).

The model is built without cuDNN kernels and called without XLA, so the SavedModel runs on a
CPU-only TF Serving.
"""

import types

import numpy as np
import tensorflow as tf

from keraslm.tasks.export_module import ExportModule
from keraslm.tokenizers import PAD_ID, truncate


class ClassifierServer(ExportModule):
    """Tokenizer + label names + model weights."""

    def __init__(self, model, tokenizer, run_config, config_path):
        super().__init__(model, tokenizer, config_path)
        self.label_names = tf.constant(run_config.labels, tf.string)
        self._keras = types.SimpleNamespace(model=model)  # Not tracked: no Keras in the SavedModel.
        self._sequence_length = run_config.model.sequence_length
        self._truncation = run_config.model.truncation
        self.serving_default = tf.function(
            self._classify, input_signature=[tf.TensorSpec([None], tf.string, name="text")], autograph=False
        )

    def signatures(self):
        return {"serving_default": self.serving_default}

    def warmup_requests(self):
        return [("serving_default", {"text": np.array([b"warm-up"], dtype=object)})]

    def _classify(self, text):
        # Normalized, tokenized and cut as in training (keraslm.tables.tokenize_texts).
        ids = truncate(self.tokenizer.tokenize(text, keep_whitespace=False), self._sequence_length, self._truncation)
        # An empty text gives no tokens; one [PAD] column keeps the batch a valid (B, 1) tensor,
        # and pooling over no unmasked position yields zeros: the head's bias decides.
        dense = ids.to_tensor(default_value=PAD_ID)
        dense = tf.pad(dense, [[0, 0], [0, tf.maximum(0, 1 - tf.shape(dense)[1])]])
        logits = self._keras.model(dense, training=False)  # (B, num_classes)
        scores = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        label_id = tf.argmax(scores, axis=-1, output_type=tf.int32)
        return {"label": tf.gather(self.label_names, label_id), "label_id": label_id, "scores": scores}
