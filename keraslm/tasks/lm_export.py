"""The language model's SavedModel root: tokenizer, weights and the decoding loop.

Signatures, every input batched with one value per row:

  serving_default: prompt (string) -> text (string), the continuation, with the export's
                   default max_new_tokens and temperature.
  generate:        prompt (string), max_new_tokens (int32), temperature (float32, 0 = greedy),
                   top_k (int32, 0 = off), top_p (float32, 1 = off), repetition_penalty
                   (float32, 1 = off), seed (int64), stop (string, "" = none)
                   -> text (string, cut before the stop string), num_tokens (int32).
  score:           text (string) -> log_likelihood (float32, natural log, summed over the
                   predicted tokens), num_tokens (int32); perplexity = exp(-ll / n).
"""

import types

import numpy as np
import tensorflow as tf

from keraslm.generation import (
    SMALL_BATCH,
    Controls,
    cut_at_stop,
    generate_tokens,
    is_plain,
    mask_special_tokens,
    validate_controls,
)
from keraslm.scoring import score_token_ids, score_windows
from keraslm.steppers import make_stepper
from keraslm.tasks.export_module import ExportModule
from keraslm.tokenizers import PAD_ID

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


class LanguageModelServer(ExportModule):
    """Tokenizer + model weights + decoding loop: the root object of the SavedModel.

    Signatures (for TF Serving): serving_default, generate, score. Functions for the Python API,
    which keraslm.inference calls in a graph Session (or through tf.saved_model.load): tokenize,
    detokenize, next_token_logits, score_windows, and generate_plain_small / generate_plain /
    generate_full, the decoding loop's variants that `generate` chooses among.
    """

    def __init__(self, model, tokenizer, run_config, export_config, config_path):
        super().__init__(model, tokenizer, config_path)
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
            "serving_default": self.serving_default,
            "generate": self.generate,
            "score": self.score,
        }

    def warmup_requests(self):
        """Each variant of the decoding loop once (plain at up to SMALL_BATCH rows, plain, and full),
        serving_default and score: a first call to each prepares its graph (seconds)."""

        def generate(rows, top_k):
            return ("generate", {
                "prompt": np.array([b"\n"] * rows, dtype=object),
                "max_new_tokens": np.full([rows], 2, np.int32),
                "temperature": np.full([rows], 0.8, np.float32),
                "top_k": np.full([rows], top_k, np.int32),
                "top_p": np.ones([rows], np.float32),
                "repetition_penalty": np.ones([rows], np.float32),
                "seed": np.arange(rows, dtype=np.int64),
                "stop": np.array([b""] * rows, dtype=object),
            })

        return [
            generate(1, 0),
            generate(SMALL_BATCH + 1, 0),
            generate(1, 5),
            ("serving_default", {"prompt": np.array([b"\n"], dtype=object)}),
            ("score", {"text": np.array([b"warm-up"], dtype=object)}),
        ]

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
