"""Writes a trained language model and its tokenizer as a SavedModel in TF Serving layout.

<export_dir>/<version>/ holds saved_model.pb, the weights, and as assets the tokenizer vocabulary
and config.json. Loading it needs TensorFlow and tensorflow-text only. Signatures, every input
batched with one value per row:

  serving_default: prompt (string) -> text (string), the continuation, with the export's
                   default max_new_tokens and temperature.
  generate:        prompt (string), max_new_tokens (int32), temperature (float32, 0 = greedy),
                   top_k (int32, 0 = off), top_p (float32, 1 = off), repetition_penalty
                   (float32, 1 = off), seed (int64), stop (string, "" = none)
                   -> text (string, cut before the stop string), num_tokens (int32).
  score:           text (string) -> log_likelihood (float32, natural log, summed over the
                   predicted tokens), num_tokens (int32); perplexity = exp(-ll / n).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import types

import tensorflow as tf

from keraslm.config import ExportConfig, write_json_atomic
from keraslm.errors import InvalidInputError
from keraslm.files import is_disk_full, pid_alive
from keraslm.generation import (
    SMALL_BATCH,
    Controls,
    cut_at_stop,
    generate_tokens,
    is_plain,
    mask_special_tokens,
    validate_controls,
)
from keraslm.models import make_stepper
from keraslm.scoring import score_token_ids, score_windows
from keraslm.tokenizers import PAD_ID
from keraslm.training import load_trained_model

CONFIG_ASSET = "config.json"


_STRINGS = tf.TensorSpec([None], tf.string)
_GENERATE_SIGNATURE = {
    "prompt": tf.TensorSpec([None], tf.string, name="prompt"),
    "max_new_tokens": tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
    "temperature": tf.TensorSpec([None], tf.float32, name="temperature"),
    "top_k": tf.TensorSpec([None], tf.int32, name="top_k"),
    "top_p": tf.TensorSpec([None], tf.float32, name="top_p"),
    "repetition_penalty": tf.TensorSpec([None], tf.float32, name="repetition_penalty"),
    "seed": tf.TensorSpec([None], tf.int64, name="seed"),
    "stop": tf.TensorSpec([None], tf.string, name="stop"),
}


class LanguageModelServer(tf.Module):
    """Tokenizer + model weights + decoding loop: the root object of the SavedModel.

    Only the model's variables are tracked, not the Keras model object (as keras.export does):
    the SavedModel then holds plain TF functions and variables and loads without Keras.

    Signatures (for TF Serving): serving_default, generate, score. Functions for the Python API,
    which keraslm.inference calls in a graph Session (or through tf.saved_model.load): tokenize,
    detokenize, next_token_logits, score_windows, and generate_plain_small / generate_plain /
    generate_full, the decoding loop's variants that `generate` chooses among.
    """

    def __init__(self, model, tokenizer, run_config, export_config, config_path):
        super().__init__(name="keraslm")
        self.tokenizer = tokenizer
        self.config_file = tf.saved_model.Asset(config_path)
        # The tf.Variables inside Keras 3's variables, not the Keras wrappers: a tracked wrapper
        # is saved as a second copy of each variable, which the checkpoint restores while the
        # functions read the first, so TF Serving and every TF1-style loader found the weights
        # uninitialized ("Could not find variable ..."; keras-team/keras#20095). Only
        # tf.saved_model.load, which pairs them up, could run those exports.
        self.model_variables = [_tf_variable(variable) for variable in model.variables]
        # A SimpleNamespace is not trackable, so the Keras objects stay out of the SavedModel.
        self._keras = types.SimpleNamespace(
            model=model,
            stepper=make_stepper(model, run_config.model, kv_cache=export_config.kv_cache),
            recompute=make_stepper(model, run_config.model, kv_cache=False),
        )
        self._sequence_length = run_config.model.sequence_length
        self._export_config = export_config
        function = lambda python_function, *signature: tf.function(  # noqa: E731
            python_function, input_signature=list(signature), autograph=False
        )
        self.generate = tf.function(self._generate, input_signature=[_GENERATE_SIGNATURE], autograph=False)
        # One function per variant of the decoding loop (generation.VARIANTS); `generate` and
        # `serving_default` call the one a request needs, so the SavedModel holds each loop once
        # (not once per signature). keraslm.load calls the variant directly: a first call then
        # prepares one loop's graph instead of all three (BENCHMARKS.md, "Start-up").
        self.generate_plain_small = tf.function(
            self._generate_plain_small, input_signature=[_GENERATE_SIGNATURE], autograph=False
        )
        self.generate_plain = tf.function(self._generate_plain, input_signature=[_GENERATE_SIGNATURE], autograph=False)
        self.generate_full = tf.function(self._generate_full, input_signature=[_GENERATE_SIGNATURE], autograph=False)
        self.serving_default = function(self._serving_default, tf.TensorSpec([None], tf.string, name="prompt"))
        self.score = function(self._score, tf.TensorSpec([None], tf.string, name="text"))
        self.tokenize = function(self._tokenize, _STRINGS)
        self.detokenize = function(self._detokenize, tf.TensorSpec([None, None], tf.int32))
        self.next_token_logits = function(
            self._next_token_logits, tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32)
        )
        self.score_windows = function(
            self._score_windows, tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)
        )

    def signatures(self):
        return {
            "serving_default": self.serving_default.get_concrete_function(),
            "generate": self.generate.get_concrete_function(),
            "score": self.score.get_concrete_function(),
        }

    # === Signatures ===

    def _generate(self, inputs):
        controls = Controls(**{name: inputs[name] for name in Controls._fields})
        variants = {"plain_small": self.generate_plain_small, "plain": self.generate_plain, "full": self.generate_full}
        call = lambda variant: lambda: variants[variant](inputs)  # noqa: E731
        small_batch = tf.size(inputs["prompt"]) <= SMALL_BATCH
        # choose_variant, in the graph.
        return tf.cond(is_plain(controls), lambda: tf.cond(small_batch, call("plain_small"), call("plain")), call("full"))

    def _generate_plain_small(self, inputs):
        return self._generate_variant(inputs, "plain_small")

    def _generate_plain(self, inputs):
        return self._generate_variant(inputs, "plain")

    def _generate_full(self, inputs):
        return self._generate_variant(inputs, "full")

    def _generate_variant(self, inputs, variant):
        controls = Controls(**{name: inputs[name] for name in Controls._fields})
        prompt = inputs["prompt"]
        checks = validate_controls(controls, tf.size(prompt), self._export_config.max_new_tokens_limit)
        if variant != "full":
            # A plain loop would silently ignore these controls.
            checks.append(
                tf.debugging.Assert(
                    is_plain(controls), [f"generate_{variant} takes no top_k, top_p, repetition_penalty or stop; use generate"]
                )
            )
        with tf.control_dependencies(checks):
            # An empty prompt starts from a line break, as nanoGPT's sampler does.
            prompt = tf.where(tf.strings.length(prompt) > 0, prompt, "\n")
        new_ids, num_tokens = generate_tokens(
            self._keras.stepper, self.tokenizer.tokenize(prompt), controls, self.tokenizer.detokenize, variant=variant
        )
        text = cut_at_stop(self.tokenizer.detokenize(new_ids), controls.stop)
        # Byte-level and subword models can stop inside a multi-byte character; serving clients
        # (JSON over REST) need valid UTF-8.
        text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")
        return {"text": text, "num_tokens": num_tokens}

    def _serving_default(self, prompt):
        batch_size = tf.shape(prompt)[0]
        defaults = self._export_config
        outputs = self._generate(
            {
                "prompt": prompt,
                "max_new_tokens": tf.fill([batch_size], defaults.max_new_tokens),
                "temperature": tf.fill([batch_size], float(defaults.temperature)),
                "top_k": tf.zeros([batch_size], tf.int32),
                "top_p": tf.ones([batch_size], tf.float32),
                "repetition_penalty": tf.ones([batch_size], tf.float32),
                # Fresh randomness per request; `generate` with a seed is the reproducible path.
                "seed": tf.random.uniform([batch_size], maxval=tf.int64.max, dtype=tf.int64),
                "stop": tf.fill([batch_size], ""),
            }
        )
        return {"text": outputs["text"]}

    def _score(self, text):
        log_likelihood, num_tokens = score_token_ids(
            self._keras.model, self.tokenizer.tokenize(text), self._sequence_length
        )
        return {"log_likelihood": log_likelihood, "num_tokens": num_tokens}

    # === Functions for the Python API ===

    def _tokenize(self, text):
        ids = self.tokenizer.tokenize(text)
        return {"token_ids": ids.to_tensor(default_value=PAD_ID), "lengths": tf.cast(ids.row_lengths(), tf.int32)}

    def _detokenize(self, token_ids):
        return self.tokenizer.detokenize(token_ids)

    def _next_token_logits(self, token_ids, position):
        """Logits (B, V) for `position` given token_ids[:, :position] ([PAD] and [UNK] masked)."""
        logits, _ = self._keras.recompute.step((), token_ids, position)
        return mask_special_tokens(tf.cast(logits, tf.float32))

    def _score_windows(self, windows, lengths):
        log_likelihood, num_tokens = score_windows(self._keras.model, windows, lengths)
        return {"log_likelihood": log_likelihood, "num_tokens": num_tokens}


_STAGING_PREFIX = ".tmp-export-"


def _remove_dead_staging(export_dir):
    """Removes staging directories of exports killed midway (kill -9, power loss)."""
    for name in os.listdir(export_dir):
        pid = name[len(_STAGING_PREFIX):].split("-", 1)[0]
        if name.startswith(_STAGING_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)


def _tf_variable(variable):
    """The tf.Variable a Keras 3 variable holds (outside any autocast scope, `.value` is it)."""
    value = getattr(variable, "value", variable)
    return value if isinstance(value, tf.Variable) else variable


def next_version(export_dir):
    """1 + the largest integer-named subdirectory (TF Serving serves the largest)."""
    versions = [int(name) for name in os.listdir(export_dir) if name.isdigit()] if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


def export_language_model(model, tokenizer, run_config, export_dir, export_config=None, verbose=True, source=None):
    """Writes <export_dir>/<next version>/ and returns its path.

    The version directory appears complete or not at all: it is written under a temporary name
    that TF Serving ignores and renamed at the end.
    """
    export_config = export_config or ExportConfig()
    export_config.validate()
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise InvalidInputError(f"--export_dir={export_dir} is a file, not a directory; pick another --export_dir")
    os.makedirs(export_dir, exist_ok=True)
    _remove_dead_staging(export_dir)
    # The PID in the name lets a later export tell a dead export's leftovers from a live one's.
    staging = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=export_dir)
    try:
        config_path = os.path.join(staging, "source", CONFIG_ASSET)
        os.makedirs(os.path.dirname(config_path))
        # "source" names the checkpoint exported, so a re-run can tell an export is up to date.
        asset = {**run_config.to_dict(), "export": dataclasses.asdict(export_config)}
        write_json_atomic(config_path, {**asset, "source": source} if source else asset)
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


def _checkpoint_source(work_dir, checkpoint):
    """What identifies the weights of an export: the run, the checkpoint and its index file's hash."""
    with open(f"{checkpoint}.index", "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()
    return {"work_dir": os.path.realpath(work_dir), "checkpoint": os.path.basename(checkpoint), "index_sha256": digest}


def _newest_export_of(export_dir, source, export_config):
    """The newest complete version in export_dir if it holds exactly this checkpoint and settings."""
    if not os.path.isdir(export_dir):
        return None
    versions = sorted((int(name) for name in os.listdir(export_dir) if name.isdigit()), reverse=True)
    for version in versions:
        version_dir = os.path.join(export_dir, str(version))
        try:
            with open(os.path.join(version_dir, "assets", CONFIG_ASSET), encoding="utf-8") as file:
                exported = json.load(file)
        except (OSError, ValueError):
            continue  # Incomplete or foreign: not the newest complete keraslm export.
        if not os.path.isfile(os.path.join(version_dir, "saved_model.pb")):
            continue
        same = exported.get("source") == source and exported.get("export") == dataclasses.asdict(export_config)
        return version_dir if same else None
    return None


def export_from_work_dir(work_dir, export_dir, export_config=None, verbose=True, only_if_changed=False):
    """Exports the latest readable checkpoint of a training work directory; returns the version dir.

    only_if_changed: when the newest version in export_dir already holds this checkpoint with the
    same export settings, say so and return it instead of writing an identical new version.
    """
    export_config = export_config or ExportConfig()
    run_config, model, tokenizer, checkpoint = load_trained_model(work_dir, use_cudnn=False)
    source = _checkpoint_source(work_dir, checkpoint)
    if only_if_changed:
        existing = _newest_export_of(export_dir, source, export_config)
        if existing:
            if verbose:
                print(f"keraslm: {existing} already holds {source['checkpoint']} of this run; not exporting it again", flush=True)
            return existing
    try:
        return export_language_model(model, tokenizer, run_config, export_dir, export_config, verbose, source=source)
    except (OSError, tf.errors.OpError) as error:
        if is_disk_full(error):
            reason = "no space left on device"
        elif isinstance(error, PermissionError) or "Permission denied" in str(error):
            reason = "permission denied"
        else:
            raise
        raise InvalidInputError(
            f"{reason} while exporting to --export_dir={export_dir}; nothing new was written there "
            "(earlier versions and the work directory are untouched). Fix that and export again"
        ) from None
