"""Loads an exported SavedModel and runs its signatures: the reading side of keraslm.export.

Needs only TensorFlow and tensorflow-text, like any TF Serving client; nothing here imports Keras.
"""

import os
import random

import tensorflow as tf
import tensorflow_text  # noqa: F401  Registers the tokenizer ops the SavedModel uses.

from keraslm.errors import InputNotFoundError, InvalidInputError


def resolve_model_dir(model_dir):
    """A version directory as given, or the largest numbered version inside a base directory."""
    if not os.path.isdir(model_dir):
        raise InputNotFoundError(f"--model_dir={model_dir}: no such directory; pass the --export_dir of keraslm-train or keraslm-export")
    if os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    versions = [name for name in os.listdir(model_dir) if name.isdigit() and os.path.isfile(os.path.join(model_dir, name, "saved_model.pb"))]
    if not versions:
        raise InvalidInputError(
            f"--model_dir={model_dir} has no saved_model.pb and no numbered version directory with one; "
            "pass a directory written by keraslm-export (or its version subdirectory)"
        )
    return os.path.join(model_dir, max(versions, key=int))


class LanguageModel:
    """An exported language model: `generate` from raw strings."""

    def __init__(self, model_dir):
        self.path = resolve_model_dir(model_dir)
        self._saved_model = tf.saved_model.load(self.path)
        if "generate" not in self._saved_model.signatures:
            raise InvalidInputError(f"--model_dir={self.path} is a SavedModel without a 'generate' signature; it was not exported by keraslm")
        self._generate = self._saved_model.signatures["generate"]

    def generate(self, prompts, max_new_tokens=100, temperature=1.0, seed=None):
        """Continuations (list of str), one per prompt. seed=None draws a random one."""
        if isinstance(prompts, str):
            prompts = [prompts]
        count = len(prompts)
        if seed is None:
            seed = random.SystemRandom().randrange(2**62)
        try:
            outputs = self._generate(
                prompt=tf.constant(prompts, tf.string),
                max_new_tokens=tf.fill([count], tf.constant(max_new_tokens, tf.int32)),
                temperature=tf.fill([count], tf.constant(temperature, tf.float32)),
                seed=tf.fill([count], tf.constant(seed, tf.int64)),
            )
        except tf.errors.InvalidArgumentError as error:
            raise InvalidInputError(error.message.splitlines()[0]) from None
        return [text.decode("utf-8") for text in outputs["text"].numpy()]


def load(model_dir):
    return LanguageModel(model_dir)
