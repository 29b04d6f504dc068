"""Runs a LiteRT export (keraslm.tflite_export) in Python: texts in, labels or logits out.

  model = keraslm.tflite_runtime.load("saved_models/sst2_tflite/1")
  model.classify(["a gripping film"])  # {"label", "label_id", "scores"}

model.tflite takes token ids; this module tokenizes with the export's own tokenizer/ directory
through keraslm's tokenizer classes, with the normalization, truncation and padding of
training, so the ids are exactly those the SavedModel's serving_default computes. The model runs
in LiteRT's interpreter (the ai-edge-litert package), or TensorFlow's tf.lite.Interpreter where
that package is missing.
"""

import json
import os

import numpy as np

from keraslm.errors import InputNotFoundError, InvalidInputError
from keraslm.tokenizers import PAD_ID, load_tokenizer

CONFIG_FILE = "config.json"
MODEL_FILE = "model.tflite"
# Rows per interpreter call: bounds the activations' memory for long lists of texts.
MAX_BATCH = 256


def _interpreter(model_path, num_threads, default_delegates):
    """LiteRT's interpreter, or TensorFlow's (deprecated in its favour) without ai-edge-litert."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType  # noqa: N806
    resolver = OpResolverType.AUTO if default_delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(model_path=model_path, num_threads=num_threads, experimental_op_resolver_type=resolver)


def load(path, num_threads=None):
    """A LiteRT export: its version directory, or its model.tflite. Returns a TFLiteClassifier
    or TFLiteLanguageModel."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config_path = os.path.join(directory, CONFIG_FILE)
    model_path = os.path.join(directory, MODEL_FILE)
    if not (os.path.isfile(config_path) and os.path.isfile(model_path)):
        raise InputNotFoundError(
            f"{path}: no {MODEL_FILE} with its {CONFIG_FILE}; pass a version directory written by "
            "keraslm-export --format=tflite"
        )
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    interface = config.get("tflite")
    if not interface:
        raise InvalidInputError(f"{config_path} has no \"tflite\" section; re-export with keraslm-export --format=tflite")
    kind = {"classify": TFLiteClassifier, "lm": TFLiteLanguageModel}[config["task"]]
    return kind(directory, config, num_threads)


class _TFLiteModel:
    """The interpreter, the tokenizer and the fixed sequence length of an export."""

    def __init__(self, directory, config, num_threads):
        self.directory = directory
        self.config = config
        self.interface = config["tflite"]
        self.sequence_length = int(self.interface["input"]["shape"][1])
        self.tokenizer = load_tokenizer(os.path.join(directory, self.interface["tokenizer"]))
        self._output = self.interface["output"]["name"]
        model_path = os.path.join(directory, MODEL_FILE)
        # "xnnpack": LiteRT's default CPU delegate; "builtin": its reference kernels.
        self.delegate = "xnnpack"
        self.interpreter = _interpreter(model_path, num_threads, default_delegates=True)
        # The signature runner resizes the batch dimension to each call's.
        self._run = self.interpreter.get_signature_runner(self.interface["signature"])
        try:
            self.run(np.zeros([1, self.sequence_length], np.int32))
        except RuntimeError as error:
            if "XNNPACK" not in str(error):
                raise
            # XNNPACK fails to prepare the full-integer model of an unrolled LSTM ("failed to
            # create XNNPACK runtime", ai-edge-litert 2.3.0 and TF 2.21 alike); the builtin
            # kernels run it.
            self.delegate = "builtin"
            self.interpreter = _interpreter(model_path, num_threads, default_delegates=False)
            self._run = self.interpreter.get_signature_runner(self.interface["signature"])

    def run(self, token_ids):
        """int32 [B, sequence_length] -> the model's output for every row, in chunks of MAX_BATCH."""
        token_ids = np.asarray(token_ids, np.int32)
        if token_ids.ndim != 2 or token_ids.shape[1] != self.sequence_length:
            raise InvalidInputError(
                f"token ids of shape {list(token_ids.shape)}: {MODEL_FILE} takes [batch, {self.sequence_length}], "
                "right-padded with 0"
            )
        outputs = [
            self._run(token_ids=token_ids[start : start + MAX_BATCH])[self._output]
            for start in range(0, len(token_ids), MAX_BATCH)
        ]
        return np.concatenate(outputs, axis=0) if outputs else np.zeros([0, *self.interface["output"]["shape"][1:]], np.float32)


class TFLiteClassifier(_TFLiteModel):
    def __init__(self, directory, config, num_threads):
        super().__init__(directory, config, num_threads)
        with open(os.path.join(directory, self.interface["labels"]), encoding="utf-8") as file:
            self.labels = np.array(file.read().split("\n")[:-1])

    def tokenize(self, texts):
        """Texts -> int32 [B, sequence_length]: normalized, tokenized and cut as training did
        (keraslm.tables.tokenize_texts, which also feeds the SavedModel's tokenizer), then padded."""
        from keraslm.tables import tokenize_texts

        if not texts:
            return np.zeros([0, self.sequence_length], np.int32)
        ids, _ = tokenize_texts(self.tokenizer, list(texts), self.sequence_length, truncation=self.interface["truncation"])
        return np.pad(ids, [[0, 0], [0, self.sequence_length - ids.shape[1]]], constant_values=PAD_ID)

    def classify(self, texts):
        """list of str -> {"label": str [B], "label_id": int32 [B], "scores": float32 [B, num_classes]}."""
        scores = self.run(self.tokenize(texts)).astype(np.float32)
        label_id = np.argmax(scores, axis=-1).astype(np.int32)
        return {"label": self.labels[label_id], "label_id": label_id, "scores": scores}


class TFLiteLanguageModel(_TFLiteModel):
    """Next-token logits over a window of at most sequence_length tokens; the caller samples."""

    def tokenize(self, texts):
        """list of str -> list of int32 arrays (whitespace kept, as the language model trained)."""
        import tensorflow as tf

        ragged = self.tokenizer.tokenize(tf.constant(list(texts)))
        return [np.asarray(row, np.int32) for row in ragged.to_list()]

    def detokenize(self, token_ids):
        import tensorflow as tf

        return [text.decode("utf-8") for text in self.tokenizer.detokenize(tf.ragged.constant(token_ids, tf.int32)).numpy()]

    def logits(self, token_ids):
        """int32 [B, sequence_length], right-padded -> float32 [B, sequence_length, vocabulary_size];
        row t is the distribution of token t + 1 (causal: padding after t changes nothing)."""
        return self.run(token_ids)

    def next_token_logits(self, token_ids):
        """A list of token-id sequences (each non-empty) -> float32 [B, vocabulary_size], the
        logits of the token after each; a sequence longer than sequence_length keeps its end."""
        windows = np.full([len(token_ids), self.sequence_length], PAD_ID, np.int32)
        last = np.zeros([len(token_ids)], np.int64)
        for row, ids in enumerate(token_ids):
            ids = np.asarray(ids, np.int32)[-self.sequence_length :]
            if not len(ids):
                raise InvalidInputError(f"sequence {row} is empty: next_token_logits needs at least one token")
            windows[row, : len(ids)] = ids
            last[row] = len(ids) - 1
        return self.logits(windows)[np.arange(len(token_ids)), last]
