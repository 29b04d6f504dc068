"""The Python API over an exported model: `keraslm.load(path)` -> generate / score / beam search.

Loading and sampling need only TensorFlow and tensorflow-text, like any TF Serving client; beam
search borrows keras-nlp's BeamSampler, imported only when asked for.
"""

import json
import os
import random
import re
import typing

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  Registers the tokenizer ops the SavedModel uses.

from keraslm.errors import InputNotFoundError, InvalidInputError


def resolve_model_dir(model_dir):
    """A version directory as given, or the largest numbered version inside a base directory."""
    if not os.path.isdir(model_dir):
        raise InputNotFoundError(
            f"--model_dir={model_dir}: no such directory; pass the --export_dir of keraslm-train or keraslm-export"
        )
    if os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    versions = [
        name
        for name in os.listdir(model_dir)
        if name.isdigit() and os.path.isfile(os.path.join(model_dir, name, "saved_model.pb"))
    ]
    if not versions:
        raise InvalidInputError(
            f"--model_dir={model_dir} has no saved_model.pb and no numbered version directory with one; "
            "pass a directory written by keraslm-export (or its version subdirectory)"
        )
    return os.path.join(model_dir, max(versions, key=int))


class Score(typing.NamedTuple):
    log_likelihood: float  # natural log, summed over the predicted tokens
    num_tokens: int  # predicted tokens: every token but the first

    @property
    def perplexity(self):
        return float(np.exp(-self.log_likelihood / self.num_tokens)) if self.num_tokens else float("nan")


def _values(name, value, count):
    """A control as a list of `count` values: one value broadcast, or exactly one per prompt."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != count:
            raise InvalidInputError(f"{name} has {len(value)} values for {count} prompts; give one value or one per prompt")
        return list(value)
    return [value] * count


def _per_row(name, value, count, dtype):
    return tf.constant(_values(name, value, count), dtype)


class LanguageModel:
    """An exported keraslm language model, loaded from a version or base directory."""

    def __init__(self, model_dir):
        self.path = resolve_model_dir(model_dir)
        self._saved_model = tf.saved_model.load(self.path)
        signatures = self._saved_model.signatures
        if "generate" not in signatures or "score" not in signatures:
            raise InvalidInputError(
                f"--model_dir={self.path} is a SavedModel without keraslm's generate and score signatures; "
                "export it with keraslm-export"
            )
        self._generate = signatures["generate"]
        self._score = signatures["score"]

    # === Sampling ===

    def generate(
        self,
        prompts,
        max_new_tokens=100,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        seed=None,
        stop="",
        num_samples=1,
        num_beams=1,
    ):
        """Continuations of each prompt, as a flat list: prompt by prompt, num_samples each.

        Every control is one value or one per prompt. Sample i of a prompt uses seed + i, so
        the same seed gives the same texts; seed=None draws one. num_beams > 1 runs beam search
        (deterministic: temperature, top_k, top_p and seed do not apply).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InvalidInputError("no prompts given; pass at least one string (it may be empty)")
        if num_samples < 1 or num_beams < 1:
            raise InvalidInputError(f"num_samples={num_samples} and num_beams={num_beams} must be at least 1")
        count = len(prompts)
        limit = self.config["export"]["max_new_tokens_limit"]
        for value in _values("max_new_tokens", max_new_tokens, count):
            if not 1 <= value <= limit:
                raise InvalidInputError(f"max_new_tokens={value} must be between 1 and this model's limit of {limit}")
        for value in _values("top_k", top_k, count):
            if not 0 <= value < 2**31:
                raise InvalidInputError(f"top_k={value} must be between 0 (off) and 2**31 - 1")
        if num_beams > 1:
            if num_samples > 1:
                raise InvalidInputError("num_samples applies to sampling; beam search returns one text per prompt")
            return self._beam_search(prompts, _values("max_new_tokens", max_new_tokens, count), num_beams, _values("stop", stop, count))
        if seed is None:
            seed = random.SystemRandom().randrange(2**62)
        for value in _values("seed", seed, count):
            if not -(2**63) <= value < 2**63 - num_samples:
                raise InvalidInputError(f"seed={value} does not fit in a signed 64-bit integer")
        controls = {
            "max_new_tokens": _per_row("max_new_tokens", max_new_tokens, count, tf.int32),
            "temperature": _per_row("temperature", temperature, count, tf.float32),
            "top_k": _per_row("top_k", top_k, count, tf.int32),
            "top_p": _per_row("top_p", top_p, count, tf.float32),
            "repetition_penalty": _per_row("repetition_penalty", repetition_penalty, count, tf.float32),
            "seed": _per_row("seed", seed, count, tf.int64),
            "stop": _per_row("stop", stop, count, tf.string),
        }
        # Sample i of prompt p sits at row p * num_samples + i, with seed + i.
        repeat = lambda tensor: tf.repeat(tensor, num_samples)  # noqa: E731
        inputs = {name: repeat(value) for name, value in controls.items()}
        inputs["seed"] += tf.tile(tf.range(num_samples, dtype=tf.int64), [count])
        inputs["prompt"] = repeat(tf.constant(prompts, tf.string))
        outputs = self._call(self._generate, **inputs)
        return [text.decode("utf-8") for text in outputs["text"].numpy()]

    def _beam_search(self, prompts, max_new_tokens, num_beams, stops):
        """Beam search with keras-nlp's BeamSampler; per-prompt max_new_tokens and stops."""
        import keras_nlp  # Only beam search needs keras-nlp.

        sampler = keras_nlp.samplers.BeamSampler(num_beams=num_beams)

        def next_logits(token_ids, cache, index):
            return self._saved_model.next_token_logits(token_ids, index), None, cache

        texts = []
        # One prompt at a time: keras-nlp's beam scores assume every row starts generating at
        # the same index.
        for prompt, new_tokens, stop_string in zip(prompts, max_new_tokens, stops):
            tokenized = self._saved_model.tokenize(tf.constant([prompt or "\n"]))
            length = int(tokenized["lengths"][0])
            token_ids = tf.pad(tokenized["token_ids"][:, :length], [[0, 0], [0, new_tokens]])
            result = sampler(next_logits, token_ids, index=length)
            text = self._saved_model.detokenize(result[:, length:])[0].numpy().decode("utf-8", "replace")
            texts.append(text.split(stop_string, 1)[0] if stop_string else text)
        return texts

    # === Scoring ===

    def score(self, texts):
        """A Score (log_likelihood, num_tokens, .perplexity) per text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        outputs = self._call(self._score, text=tf.constant(texts, tf.string))
        return [
            Score(float(log_likelihood), int(num_tokens))
            for log_likelihood, num_tokens in zip(outputs["log_likelihood"].numpy(), outputs["num_tokens"].numpy())
        ]

    def tokenize(self, texts):
        """Token ids, a list of int lists."""
        outputs = self._saved_model.tokenize(tf.constant(texts, tf.string))
        return [row[:length].tolist() for row, length in zip(outputs["token_ids"].numpy(), outputs["lengths"].numpy())]

    def detokenize(self, token_ids):
        dense = tf.ragged.constant(token_ids, dtype=tf.int32).to_tensor()
        return [text.decode("utf-8", "replace") for text in self._saved_model.detokenize(dense).numpy()]

    def score_windows(self, windows, lengths):
        """Low level, for keraslm.evaluation: summed log-likelihoods of prepared windows."""
        outputs = self._saved_model.score_windows(tf.constant(windows, tf.int32), tf.constant(lengths, tf.int32))
        return outputs["log_likelihood"].numpy(), outputs["num_tokens"].numpy()

    @property
    def config(self):
        """The training and export settings stored in the SavedModel."""
        with open(os.path.join(self.path, "assets", "config.json"), encoding="utf-8") as file:
            return json.load(file)

    @staticmethod
    def _call(function, **inputs):
        try:
            return function(**inputs)
        except tf.errors.InvalidArgumentError as error:
            raise InvalidInputError(_assertion_message(error.message)) from None


def _assertion_message(message):
    """The signature's own check message ("top_p must be in (0, 1] ...") out of TF's error text."""
    match = re.search(r"assertion failed: \[([^\]]*)\]", message)
    if match:
        return match.group(1)
    lines = [line for line in message.splitlines() if line.strip() and "Graph execution error" not in line]
    return lines[0] if lines else message


def load(model_dir):
    """Loads an exported language model (a version directory or a base directory)."""
    return LanguageModel(model_dir)
