"""Writes a trained language model and its tokenizer as a SavedModel in TF Serving layout.

<export_dir>/<version>/ holds saved_model.pb, the weights, and as assets the tokenizer vocabulary
and config.json. Loading it needs TensorFlow and tensorflow-text only. Signatures:

  serving_default: prompt (string [B]) -> text (string [B]), the continuation, with the export's
                   default max_new_tokens and temperature.
  generate:        prompt (string [B]), max_new_tokens (int32 [B]), temperature (float32 [B],
                   0 = greedy), seed (int64 [B]) -> text (string [B]), num_tokens (int32 [B]).
"""

import dataclasses
import json
import os
import shutil
import tempfile
import types

import tensorflow as tf

from keraslm.config import ExportConfig, write_json_atomic
from keraslm.generation import generate_tokens
from keraslm.models import make_stepper
from keraslm.training import load_trained_model

CONFIG_ASSET = "config.json"


_PROMPT_SPEC = tf.TensorSpec([None], tf.string, name="prompt")
_GENERATE_SIGNATURE = [
    _PROMPT_SPEC,
    tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
    tf.TensorSpec([None], tf.float32, name="temperature"),
    tf.TensorSpec([None], tf.int64, name="seed"),
]


class LanguageModelServer(tf.Module):
    """Tokenizer + model weights + decoding loop: the root object of the SavedModel.

    Only the model's variables are tracked, not the Keras model object (as keras.export does):
    the SavedModel then holds plain TF functions and variables and loads without Keras.
    """

    def __init__(self, model, tokenizer, run_config, export_config, config_path):
        super().__init__(name="keraslm")
        self.tokenizer = tokenizer
        self.config_file = tf.saved_model.Asset(config_path)
        self.model_variables = list(model.variables)
        # A SimpleNamespace is not trackable, so the Keras objects stay out of the SavedModel.
        self._keras = types.SimpleNamespace(stepper=make_stepper(model, run_config.model))
        self._export_config = export_config
        self.generate = tf.function(self._generate, input_signature=_GENERATE_SIGNATURE, autograph=False)
        self.serving_default = tf.function(self._serving_default, input_signature=[_PROMPT_SPEC], autograph=False)

    def signatures(self):
        return {
            "serving_default": self.serving_default.get_concrete_function(),
            "generate": self.generate.get_concrete_function(),
        }

    def _generate(self, prompt, max_new_tokens, temperature, seed):
        limit = self._export_config.max_new_tokens_limit
        checks = [
            tf.debugging.assert_equal(tf.size(max_new_tokens), tf.size(prompt), message="max_new_tokens must have one value per prompt"),
            tf.debugging.assert_equal(tf.size(temperature), tf.size(prompt), message="temperature must have one value per prompt"),
            tf.debugging.assert_equal(tf.size(seed), tf.size(prompt), message="seed must have one value per prompt"),
            tf.debugging.assert_greater_equal(max_new_tokens, 1, message="max_new_tokens must be at least 1"),
            tf.debugging.assert_less_equal(max_new_tokens, limit, message=f"max_new_tokens must be at most {limit}"),
            tf.debugging.assert_greater_equal(temperature, 0.0, message="temperature must be >= 0 (0 = greedy)"),
        ]
        with tf.control_dependencies(checks):
            # An empty prompt starts from a line break, as nanoGPT's sampler does.
            prompt = tf.where(tf.strings.length(prompt) > 0, prompt, "\n")
        prompt_ids = self.tokenizer.tokenize(prompt)
        new_ids = generate_tokens(self._keras.stepper, prompt_ids, max_new_tokens, temperature, seed)
        text = self.tokenizer.detokenize(new_ids)
        # Byte-level and subword models can stop inside a multi-byte character; serving clients
        # (JSON over REST) need valid UTF-8.
        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
        return {"text": text, "num_tokens": tf.cast(new_ids.row_lengths(), tf.int32)}

    def _serving_default(self, prompt):
        batch_size = tf.shape(prompt)[0]
        outputs = self._generate(
            prompt,
            tf.fill([batch_size], self._export_config.max_new_tokens),
            tf.fill([batch_size], float(self._export_config.temperature)),
            # Fresh randomness per request; `generate` with a seed is the reproducible path.
            tf.random.uniform([batch_size], maxval=tf.int64.max, dtype=tf.int64),
        )
        return {"text": outputs["text"]}


def next_version(export_dir):
    """1 + the largest integer-named subdirectory (TF Serving serves the largest)."""
    versions = [int(name) for name in os.listdir(export_dir) if name.isdigit()] if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


def export_language_model(model, tokenizer, run_config, export_dir, export_config=None, verbose=True):
    """Writes <export_dir>/<next version>/ and returns its path.

    The version directory appears complete or not at all: it is written under a temporary name
    that TF Serving ignores and renamed at the end.
    """
    export_config = export_config or ExportConfig()
    export_config.validate()
    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-export-", dir=export_dir)
    try:
        config_path = os.path.join(staging, "source", CONFIG_ASSET)
        os.makedirs(os.path.dirname(config_path))
        write_json_atomic(config_path, {**run_config.to_dict(), "export": dataclasses.asdict(export_config)})
        server = LanguageModelServer(model, tokenizer, run_config, export_config, config_path)
        saved_model_dir = os.path.join(staging, "saved_model")
        tf.saved_model.save(server, saved_model_dir, signatures=server.signatures())
        while True:
            version_dir = os.path.join(export_dir, str(next_version(export_dir)))
            try:
                os.rename(saved_model_dir, version_dir)
                break
            except OSError:
                if not os.path.exists(version_dir):
                    raise
                # Another export took this number meanwhile: take the next one.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if verbose:
        print(f"keraslm: exported {version_dir}", flush=True)
    return version_dir


def export_from_work_dir(work_dir, export_dir, export_config=None, verbose=True):
    """Exports the latest checkpoint of a training work directory."""
    run_config, model, tokenizer = load_trained_model(work_dir)
    return export_language_model(model, tokenizer, run_config, export_dir, export_config, verbose)


def read_exported_config(version_dir):
    with open(os.path.join(version_dir, "assets", CONFIG_ASSET), encoding="utf-8") as file:
        return json.load(file)
