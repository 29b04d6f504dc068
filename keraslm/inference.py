"""The Python API over an exported model: `keraslm.load(path)` -> generate / score / beam search for a
language model, classify for a text classifier, translate for a translation (seq2seq) model.

Loading and sampling need only TensorFlow and tensorflow-text's ops, like any TF Serving client;
beam search borrows keras-nlp's BeamSampler, imported only when asked for.

The SavedModel runs in a TF1-style graph Session, as TF Serving runs it, not through
`tf.saved_model.load`, which rebuilds every function of the SavedModel as a Python graph before
the first call (seconds for a small model). Functions are imported into the Session when first
called, and generation calls the one decoding-loop variant a request needs, so a first call
prepares one loop instead of three. BENCHMARKS.md ("Start-up") has the figures.
"""

import json
import os
import random
import re
import sys
import typing

import numpy as np

from keraslm.config import MAX_BEAMS
from keraslm.errors import InputNotFoundError, InvalidInputError
from keraslm.tf_import import import_tensorflow_quietly, native_stderr_captured, register_text_ops

tf = import_tensorflow_quietly()
register_text_ops()  # The tokenizer ops the SavedModel uses.

# The runtime pieces keraslm.tf_import imported; using them (rather than `tf.`) leaves the rest
# of TensorFlow unimported (tf_import's docstring). `tf.` is for the fallbacks and beam search.
# pylint: disable=wrong-import-position
from google.protobuf.message import DecodeError  # noqa: E402  (protobuf comes with TensorFlow)
from tensorflow.python.framework import errors  # noqa: E402

from keraslm.saved_model_session import SavedModelSession  # noqa: E402

CONFIG_ASSET = "config.json"

# keraslm-generate's defaults, which generate() shares.
DEFAULT_MAX_NEW_TOKENS = 200
DEFAULT_TEMPERATURE = 0.8

# keraslm.generation.SMALL_BATCH and choose_variant, restated here because importing
# keraslm.generation would import tensorflow-text's Python package and with it Keras (seconds);
# tests/test_generation.py checks that the two agree.
SMALL_BATCH = 8

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def resolve_model_dir(model_dir):
    """A version directory as given, or the largest complete numbered version of a base directory.

    A newer numbered directory without saved_model.pb (an export in progress, or one that died)
    is skipped with a one-line note on stderr.
    """
    if not os.path.isdir(model_dir):
        raise InputNotFoundError(
            f"--model_dir={model_dir}: no such directory; pass the --export_dir of keraslm-train or keraslm-export"
        )
    if os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    numbered = sorted((name for name in os.listdir(model_dir) if name.isdigit()), key=int)
    complete = [name for name in numbered if os.path.isfile(os.path.join(model_dir, name, "saved_model.pb"))]
    if not complete:
        versions = f" (version directories {', '.join(numbered)} have none)" if numbered else ""
        raise InvalidInputError(
            f"--model_dir={model_dir} has no saved_model.pb and no numbered version directory with one{versions}; "
            "pass a directory written by keraslm-export (or its version subdirectory)"
        )
    chosen = os.path.join(model_dir, complete[-1])
    if numbered[-1] != complete[-1]:
        newest = os.path.join(model_dir, numbered[-1])
        # stderr, one line: stdout carries the generated text.
        print(f"keraslm: note: {newest} has no saved_model.pb (incomplete export?); using {chosen}", file=sys.stderr, flush=True)
    return chosen


class Score(typing.NamedTuple):
    log_likelihood: float  # natural log, summed over the predicted tokens
    num_tokens: int  # predicted tokens: every token but the first

    @property
    def perplexity(self):
        return float(np.exp(-self.log_likelihood / self.num_tokens)) if self.num_tokens else float("nan")


def utf8_error(text):
    """None if `text` encodes as UTF-8, else what is wrong ("byte 0xff at byte offset 3 is ...").

    Command-line arguments that are not UTF-8 reach Python as lone surrogates (surrogateescape);
    encoding them back that way recovers the bytes that were passed.
    """
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        data = text.encode("utf-8", "surrogateescape")
        data.decode("utf-8")
    except UnicodeEncodeError:
        return "it holds a lone surrogate code point, which has no UTF-8 encoding"
    except UnicodeDecodeError as error:
        return f"byte 0x{data[error.start]:02x} at byte offset {error.start} is not valid UTF-8"
    return "it holds surrogate code points standing for bytes, not text"


def _encoded(name, texts):
    """UTF-8 bytes of each str, as the object array a Session feeds, or an error naming the bad one."""
    encoded = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"{name}[{index}] is of type {type(text).__name__}, not str; pass text (str)")
        problem = utf8_error(text)
        if problem:
            raise InvalidInputError(f"{name}[{index}] is not UTF-8 text: {problem}; pass UTF-8 text")
        encoded.append(text.encode("utf-8"))
    array = np.empty(len(encoded), dtype=object)
    array[:] = encoded
    return array


def _values(name, value, count):
    """A control as a list of `count` values: one value broadcast, or exactly one per prompt."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != count:
            raise InvalidInputError(f"{name} has {len(value)} values for {count} prompts; give one value or one per prompt")
        return list(value)
    return [value] * count


def _variant(controls, batch_size):
    """keraslm.generation.choose_variant(is_plain(controls), batch_size), on the numpy inputs."""
    plain = (
        np.all(controls["top_k"] == 0)
        and np.all(controls["top_p"] >= np.float32(1.0))
        and np.all(controls["repetition_penalty"] == np.float32(1.0))
        and all(len(stop) == 0 for stop in controls["stop"])
    )
    if not plain:
        return "full"
    return "plain_small" if batch_size <= SMALL_BATCH else "plain"


def _damaged(model_dir, path, error):
    detail = error.message if isinstance(error, errors.OpError) else str(error)
    # TF's "Graph execution error:" preamble and [[{{node ...}}]] trailers say nothing to a user.
    detail = re.sub(r"\[\[.*?\]\]|Graph execution error:", " ", detail, flags=re.S)
    detail = " ".join(detail.split()) or type(error).__name__
    if len(detail) > 300:
        detail = detail[:300] + "..."
    where = f"--model_dir={model_dir}"
    if os.path.normpath(model_dir) != os.path.normpath(path):
        where += f" ({path})"
    return InvalidInputError(
        f"{where} is a damaged or incomplete export ({detail}); export it again with keraslm-export "
        f"--work_dir=<its training directory> --export_dir={os.path.dirname(os.path.normpath(path))}"
    )


# What TensorFlow and protobuf raise on a truncated or incomplete SavedModel.
_LOAD_ERRORS = (OSError, ValueError, KeyError, IndexError, DecodeError, errors.OpError)


class _Export:
    """What every kind of keraslm export shares: its directory, config asset, Session and calls."""

    # The task in assets/config.json this class serves, and the signatures it needs.
    task = None
    required_signatures = set()

    def __init__(self, model_dir, path=None):
        self.path = path or resolve_model_dir(model_dir)
        self._model_dir = model_dir
        self._restored = None  # tf.saved_model.load's object, for exports the Session cannot run
        config_path = os.path.join(self.path, "assets", CONFIG_ASSET)
        try:
            with open(config_path, encoding="utf-8") as file:
                self._config = json.load(file)
            task = self._config.get("task", "lm")
        except FileNotFoundError:
            raise self._damaged(f"assets/{CONFIG_ASSET} is missing") from None
        except (OSError, ValueError, AttributeError) as error:
            raise self._damaged(f"assets/{CONFIG_ASSET} is unreadable: {error}") from None
        if task != self.task:
            command = _COMMANDS.get(task, "the keraslm command for it")
            raise InvalidInputError(
                f"--model_dir={self.path} is a {_TASK_NAMES.get(task, repr(task))} export, not a "
                f"{_TASK_NAMES[self.task]}; use {command} with it"
            )
        try:
            self._check_config()
        except (KeyError, TypeError) as error:
            raise self._damaged(f"assets/{CONFIG_ASSET} is unreadable: {error}") from None
        if not os.path.isfile(os.path.join(self.path, "variables", "variables.index")):
            raise self._damaged("variables/variables.index is missing")
        try:
            self._session = SavedModelSession(self.path)
        except _LOAD_ERRORS as error:
            raise self._damaged(error) from None
        if not self._session.usable:
            self._session.close()
            self._session = None
            self._restored_object()
            print(
                f"keraslm: note: {self.path} was written by an older keraslm-export: TF Serving cannot run it (its "
                "functions read weights its checkpoint does not restore; keras-team/keras#20095) and it loads slowly "
                "here; export it again with keraslm-export",
                file=sys.stderr,
                flush=True,
            )
        names = set(self._session.signature_defs) if self._session else set(self._restored.signatures)
        missing = sorted(self.required_signatures - names)
        if missing:
            raise InvalidInputError(
                f"--model_dir={self.path} is a SavedModel without keraslm's {' and '.join(missing)} "
                f"signature{'s' if len(missing) > 1 else ''}; export it with keraslm-export"
            )

    def _damaged(self, error):
        return _damaged(self._model_dir, self.path, error)

    def _restored_object(self):
        """tf.saved_model.load's object: only for exports whose weights a Session cannot restore."""
        if self._restored is None:
            try:
                self._restored = tf.saved_model.load(self.path)
            except _LOAD_ERRORS as error:
                raise self._damaged(error) from None
        return self._restored

    def _signature(self, name, **inputs):
        """Runs a signature on numpy inputs; returns its outputs as numpy arrays."""
        try:
            if self._session is not None:
                function = self._session.signature(name)
            else:
                signature = self._restored.signatures[name]
                function = lambda **values: {  # noqa: E731
                    key: value.numpy() for key, value in signature(**{k: tf.constant(v) for k, v in values.items()}).items()
                }
        except _LOAD_ERRORS as error:
            raise self._damaged(error) from None
        return self._run(function, **inputs)

    def _function(self, attribute):
        """A function the export keeps for the Python API, as callable(*numpy inputs) -> numpy outputs."""
        if self._session is not None:
            try:
                function = self._session.function(attribute)
            except _LOAD_ERRORS as error:
                raise self._damaged(error) from None
            if function is not None:
                return lambda *args, **named: self._run(function, *args, **named)
        restored = getattr(self._restored_object(), attribute, None)
        if restored is None:
            return None

        def call(*args, **named):
            # Named inputs are a dict argument's entries (the generate_* functions take one dict).
            if named:
                args = ({key: tf.constant(value) for key, value in named.items()},)
            else:
                args = [tf.constant(value) for value in args]
            outputs = restored(*args)
            if isinstance(outputs, dict):
                return {key: value.numpy() for key, value in outputs.items()}
            return outputs.numpy()

        return lambda *args, **named: self._run(call, *args, **named)

    @staticmethod
    def _run(function, *args, **named):
        try:
            return function(*args, **named)
        except errors.InvalidArgumentError as error:
            raise InvalidInputError(assertion_message(error.message)) from None

    def _check_config(self):
        """Raises KeyError or TypeError when assets/config.json lacks what this class reads."""
        self._config["model"]["sequence_length"]  # pylint: disable=pointless-statement

    @property
    def config(self):
        """The training and export settings stored in the SavedModel (assets/config.json)."""
        return self._config


class LanguageModel(_Export):
    """An exported keraslm language model: generate, score, tokenize."""

    task = "lm"
    required_signatures = {"generate", "score"}

    def _check_config(self):
        self._config["export"]["max_new_tokens_limit"], self._config["model"]["sequence_length"]  # pylint: disable=pointless-statement

    # === Sampling ===

    def generate(
        self,
        prompts,
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
        temperature=None,
        top_k=None,
        top_p=None,
        repetition_penalty=None,
        seed=None,
        stop="",
        num_samples=None,
        num_beams=1,
    ):
        """Continuations of each prompt, as a flat list: prompt by prompt, num_samples each.

        Every control is one value or one per prompt. Unset controls take keraslm-generate's
        defaults: temperature 0.8, top_k 0 and top_p 1 (off), repetition_penalty 1 (off), one
        sample, a random seed. Sample i of a prompt uses seed + i, so the same seed gives the same
        texts. num_beams > 1 runs beam search, which is deterministic and takes only
        max_new_tokens and stop: it refuses the sampling controls (temperature, top_k, top_p,
        repetition_penalty, seed, num_samples) instead of ignoring them.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InvalidInputError("no prompts given; pass at least one string (it may be empty)")
        if num_beams < 1 or (num_samples is not None and num_samples < 1):
            raise InvalidInputError(f"num_samples={num_samples} and num_beams={num_beams} must be at least 1")
        count = len(prompts)
        encoded_prompts = _encoded("prompts", prompts)
        stops = _encoded("stop", _values("stop", stop, count))
        limit = self.config["export"]["max_new_tokens_limit"]
        new_tokens = _values("max_new_tokens", max_new_tokens, count)
        for value in new_tokens:
            if not 1 <= value <= limit:
                raise InvalidInputError(f"max_new_tokens={value} must be between 1 and this model's limit of {limit}")
        if num_beams > 1:
            sampling = dict(
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
                seed=seed,
                num_samples=num_samples,
            )
            given = [name for name, value in sampling.items() if value is not None]
            if given:
                raise InvalidInputError(
                    f"{given[0]} applies to sampling; beam search (num_beams={num_beams}) is deterministic and does "
                    f"not use {', '.join(given)}: leave {'it' if len(given) == 1 else 'them'} unset, or sample with num_beams=1"
                )
            return self._beam_search(prompts, new_tokens, num_beams, [value.decode("utf-8") for value in stops])
        num_samples = 1 if num_samples is None else num_samples
        top_k = 0 if top_k is None else top_k
        for value in _values("top_k", top_k, count):
            if not 0 <= value < 2**31:
                raise InvalidInputError(f"top_k={value} must be between 0 (off) and 2**31 - 1")
        if seed is None:
            seed = random.SystemRandom().randrange(2**62)
        seeds = _values("seed", seed, count)
        for value in seeds:
            # Sample i uses seed + i: the last sample's seed must fit too.
            if not _INT64_MIN <= value <= _INT64_MAX - (num_samples - 1):
                if num_samples == 1:
                    raise InvalidInputError(f"seed={value} does not fit in a signed 64-bit integer (-2**63 to 2**63 - 1)")
                raise InvalidInputError(
                    f"seed={value} with num_samples={num_samples} does not fit in a signed 64-bit integer: sample i "
                    f"uses seed + i, so seed + {num_samples - 1} must be at most 2**63 - 1"
                )
        controls = {
            "prompt": encoded_prompts,
            "max_new_tokens": np.array(new_tokens, np.int32),
            "temperature": np.array(_values("temperature", DEFAULT_TEMPERATURE if temperature is None else temperature, count), np.float32),
            "top_k": np.array(_values("top_k", top_k, count), np.int32),
            "top_p": np.array(_values("top_p", 1.0 if top_p is None else top_p, count), np.float32),
            "repetition_penalty": np.array(
                _values("repetition_penalty", 1.0 if repetition_penalty is None else repetition_penalty, count), np.float32
            ),
            "seed": np.array(seeds, np.int64),
            "stop": stops,
        }
        # Sample i of prompt p sits at row p * num_samples + i, with seed + i.
        inputs = {name: np.repeat(value, num_samples) for name, value in controls.items()}
        inputs["seed"] += np.tile(np.arange(num_samples, dtype=np.int64), count)
        # The loop variant the generate signature would pick, called directly (module docstring).
        variant = self._function(f"generate_{_variant(inputs, count * num_samples)}")
        outputs = variant(**inputs) if variant is not None else self._signature("generate", **inputs)
        return [text.decode("utf-8") for text in outputs["text"]]

    def _beam_search(self, prompts, max_new_tokens, num_beams, stops):
        """Beam search with keras-nlp's BeamSampler; per-prompt max_new_tokens and stops."""
        # Importing keras-nlp and running its sampler (Keras may compile parts with XLA) log from
        # native code on descriptor 2; that is held back unless something fails.
        with native_stderr_captured():
            import keras_nlp  # Only beam search needs keras-nlp.

        sampler = keras_nlp.samplers.BeamSampler(num_beams=num_beams)
        next_token_logits = self._function("next_token_logits")
        vocabulary_size = self.config["model"]["vocabulary_size"]

        def next_logits(token_ids, cache, index):
            # numpy_function: the sampler may run eagerly or trace its loop.
            logits = tf.numpy_function(
                lambda ids, position: next_token_logits(ids.astype(np.int32), np.int32(position)),
                [token_ids, index],
                tf.float32,
            )
            logits.set_shape([None, vocabulary_size])
            return logits, None, cache

        texts = []
        # One prompt at a time: keras-nlp's beam scores assume every row starts generating at
        # the same index.
        for prompt, new_tokens, stop_string in zip(prompts, max_new_tokens, stops):
            tokenized = self._tokenize_arrays(_encoded("prompts", [prompt or "\n"]))
            length = int(tokenized["lengths"][0])
            token_ids = tf.pad(tf.constant(tokenized["token_ids"][:, :length]), [[0, 0], [0, new_tokens]])
            with native_stderr_captured():
                result = sampler(next_logits, token_ids, index=length)
            new_ids = np.asarray(result)[:, length:].astype(np.int32)
            text = self._function("detokenize")(new_ids)[0].decode("utf-8", "replace")
            texts.append(text.split(stop_string, 1)[0] if stop_string else text)
        return texts

    # === Scoring ===

    def score(self, texts):
        """A Score (log_likelihood, num_tokens, .perplexity) per text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        outputs = self._signature("score", text=_encoded("texts", texts))
        return [
            Score(float(log_likelihood), int(num_tokens))
            for log_likelihood, num_tokens in zip(outputs["log_likelihood"], outputs["num_tokens"])
        ]

    def _tokenize_arrays(self, encoded):
        return self._function("tokenize")(encoded)

    def tokenize(self, texts):
        """Token ids, a list of int lists."""
        outputs = self._tokenize_arrays(_encoded("texts", list(texts)))
        return [row[:length].tolist() for row, length in zip(outputs["token_ids"], outputs["lengths"])]

    def detokenize(self, token_ids):
        width = max((len(row) for row in token_ids), default=0)
        dense = np.zeros([len(token_ids), width], np.int32)  # [PAD] is 0 and detokenizes to ""
        for index, row in enumerate(token_ids):
            dense[index, : len(row)] = row
        return [text.decode("utf-8", "replace") for text in self._function("detokenize")(dense)]

    def score_windows(self, windows, lengths):
        """Low level, for keraslm.evaluation: summed log-likelihoods of prepared windows."""
        outputs = self._function("score_windows")(np.asarray(windows, np.int32), np.asarray(lengths, np.int32))
        return outputs["log_likelihood"], outputs["num_tokens"]



class Classification(typing.NamedTuple):
    label: str  # the most likely label
    score: float  # its probability
    scores: dict  # label -> probability, in the model's label order


class Classifier(_Export):
    """An exported keraslm text classifier: classify raw strings into its labels."""

    task = "classify"
    required_signatures = {"serving_default"}
    # Texts per call into the SavedModel: bounds memory for long input files.
    BATCH_SIZE = 64

    def _check_config(self):
        labels = self._config["labels"]
        if not isinstance(labels, list) or len(labels) < 2:
            raise TypeError("it names fewer than two labels")

    @property
    def labels(self):
        """The label names, in the order of the scores."""
        return list(self._config["labels"])

    def classify(self, texts):
        """A Classification (label, score, scores) per text; a str gives a list of one."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = _encoded("texts", texts)
        results = []
        for start in range(0, len(encoded), self.BATCH_SIZE):
            outputs = self._signature("serving_default", text=encoded[start : start + self.BATCH_SIZE])
            for label, scores in zip(outputs["label"], outputs["scores"]):
                probabilities = {name: float(value) for name, value in zip(self.labels, scores)}
                label = label.decode("utf-8")
                results.append(Classification(label, probabilities[label], probabilities))
        return results


class Translation(typing.NamedTuple):
    text: str  # the translation
    score: float  # natural log-probabilities of its tokens, summed (without the length penalty)
    num_tokens: int  # tokens the model generated for it


class Translator(_Export):
    """An exported keraslm translation (seq2seq) model: translate raw source sentences."""

    task = "seq2seq"
    required_signatures = {"serving_default", "translate"}
    # Sentences per call into the SavedModel: bounds memory for long input files.
    BATCH_SIZE = 64

    def _check_config(self):
        export = self._config["export"]
        export["max_new_tokens"], export["max_new_tokens_limit"], export["num_beams"], export["length_penalty"]  # pylint: disable=pointless-statement

    def translate(self, sources, max_new_tokens=None, temperature=None, num_beams=None, length_penalty=None, seed=None):
        """The translation of each source, a list of str; a str gives a list of one.

        Unset controls take the export's own (what serving_default uses, config["export"]):
        max_new_tokens, num_beams, length_penalty, temperature (0: greedy); the seed is random.
        num_beams > 1 runs beam search, which is deterministic: temperature and seed are then
        refused instead of ignored.
        """
        results = self.translate_with_details(sources, max_new_tokens, temperature, num_beams, length_penalty, seed)
        return [result.text for result in results]

    def translate_with_details(
        self, sources, max_new_tokens=None, temperature=None, num_beams=None, length_penalty=None, seed=None
    ):
        """A Translation (text, score, num_tokens) per source; arguments as translate()'s."""
        sources = [sources] if isinstance(sources, str) else list(sources)
        controls = self.decoding_controls(max_new_tokens, temperature, num_beams, length_penalty, seed)
        encoded = _encoded("sources", sources)
        results = []
        for start in range(0, len(encoded), self.BATCH_SIZE):
            batch = encoded[start : start + self.BATCH_SIZE]
            count = len(batch)
            outputs = self._signature(
                "translate",
                source=batch,
                max_new_tokens=np.full([count], controls["max_new_tokens"], np.int32),
                temperature=np.full([count], controls["temperature"], np.float32),
                num_beams=np.full([count], controls["num_beams"], np.int32),
                length_penalty=np.full([count], controls["length_penalty"], np.float32),
                seed=np.full([count], controls["seed"], np.int64),
            )
            for text, score, num_tokens in zip(outputs["translation"], outputs["score"], outputs["num_tokens"]):
                # "replace": a byte-level vocabulary can end a translation inside a character.
                results.append(Translation(text.decode("utf-8", "replace"), float(score), int(num_tokens)))
        return results

    def decoding_controls(self, max_new_tokens=None, temperature=None, num_beams=None, length_penalty=None, seed=None, prefix=""):
        """translation_controls() with this export's defaults: the settings a translate call runs with."""
        return translation_controls(self.config["export"], max_new_tokens, temperature, num_beams, length_penalty, seed, prefix)


def translation_controls(
    export, max_new_tokens=None, temperature=None, num_beams=None, length_penalty=None, seed=None, prefix=""
):
    """The checked decoding settings of a translation, unset ones filled in: a dict of the five.

    export: the export's config["export"] (its defaults and max_new_tokens_limit). The one place
    the controls are checked for the Python API, keraslm-translate and keraslm-evaluate, so a bad
    value gets a message naming it rather than a graph assertion; prefix="--" names flags.
    """
    beams_given = num_beams is not None
    num_beams = export["num_beams"] if num_beams is None else num_beams
    if not _is_integer(num_beams) or not 1 <= num_beams <= MAX_BEAMS:
        raise InvalidInputError(
            f"{prefix}num_beams={num_beams!r} must be an integer between 1 (greedy or sampling) and {MAX_BEAMS}"
        )
    if num_beams > 1:
        given = [f"{prefix}{name}" for name, value in (("temperature", temperature), ("seed", seed)) if value is not None]
        if given:
            # The export's default may be beam search (num_beams=4): then say where it comes from.
            origin = "" if beams_given else ", this model's default"
            raise InvalidInputError(
                f"{given[0]} applies to sampling; beam search ({prefix}num_beams={num_beams}{origin}) is deterministic "
                f"and does not use {', '.join(given)}: leave {'it' if len(given) == 1 else 'them'} unset, or sample "
                f"with {prefix}num_beams=1"
            )
    limit = export["max_new_tokens_limit"]
    max_new_tokens = export["max_new_tokens"] if max_new_tokens is None else max_new_tokens
    if not _is_integer(max_new_tokens) or not 1 <= max_new_tokens <= limit:
        raise InvalidInputError(
            f"{prefix}max_new_tokens={max_new_tokens!r} must be an integer between 1 and this model's limit of {limit}"
        )
    temperature = export.get("temperature", 0.0) if temperature is None else temperature
    if not _is_number(temperature) or not 0 <= temperature < float("inf"):
        raise InvalidInputError(f"{prefix}temperature={temperature!r} must be 0 (greedy) or a positive number")
    length_penalty = export["length_penalty"] if length_penalty is None else length_penalty
    if not _is_number(length_penalty) or not np.isfinite(length_penalty):
        raise InvalidInputError(
            f"{prefix}length_penalty={length_penalty!r} must be a finite number (0: rank beams by their summed log-probability)"
        )
    if seed is None:
        seed = random.SystemRandom().randrange(2**62)
    if not _is_integer(seed) or not _INT64_MIN <= seed <= _INT64_MAX:
        raise InvalidInputError(
            f"{prefix}seed={seed!r} must be an integer that fits in a signed 64-bit integer (-2**63 to 2**63 - 1)"
        )
    return {
        "max_new_tokens": int(max_new_tokens),
        "temperature": float(temperature),
        "num_beams": int(num_beams),
        "length_penalty": float(length_penalty),
        "seed": int(seed),
    }


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# What each task's export is called, and the command that uses it.
_TASK_NAMES = {"lm": "language model", "classify": "text classifier", "seq2seq": "translation model"}
_COMMANDS = {
    "lm": "keraslm-generate (or keraslm.load(...).generate)",
    "classify": "keraslm-classify (or keraslm.load(...).classify)",
    "seq2seq": "keraslm-translate (or keraslm.load(...).translate)",
}


def assertion_message(message):
    """The signature's own check message ("top_p must be in (0, 1] ...") out of TF's error text."""
    # The message may hold brackets itself ("(0, 1]"); TF follows it with " [" or a line end.
    match = re.search(r"assertion failed: \[(.*?)\](?: \[|\n|$)", message)
    if match:
        return match.group(1)
    lines = [line for line in message.splitlines() if line.strip() and "Graph execution error" not in line]
    return lines[0] if lines else message


def load(model_dir):
    """Loads an export (a version directory or a base directory) as the class of its task.

    A language model (`.generate`, `.score`), a text classifier (`.classify`) or a translation
    model (`.translate`), from the task recorded in the export's assets/config.json.
    """
    path = resolve_model_dir(model_dir)
    try:
        with open(os.path.join(path, "assets", CONFIG_ASSET), encoding="utf-8") as file:
            task = json.load(file).get("task", "lm")
    except (OSError, ValueError, AttributeError):
        task = "lm"  # The class's own loading names what is wrong.
    classes = {"classify": Classifier, "seq2seq": Translator}
    return classes.get(task, LanguageModel)(model_dir, path=path)
