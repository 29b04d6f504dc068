"""Plain configuration objects for a keraslm run, and their config.json form.

Field names are the command-line flag names, so an error can name the flag to change. The
resolved config is written into the work directory; export and resume rebuild the exact model
from it.
"""

import dataclasses
import json
import math
import os
import typing
from typing import Optional

from keraslm.errors import InvalidInputError

TASKS = ("lm",)
TOKENIZERS = ("char", "byte", "wordpiece", "sentencepiece")
MODELS = ("transformer", "lstm")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")

# Vocabulary cap used when --vocabulary_size is 0 for the tokenizers that must have one.
DEFAULT_SUBWORD_VOCABULARY_SIZE = 8000

# keras.utils.set_random_seed seeds numpy, whose seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1


# Settings become float32 tensors: a larger magnitude turns into infinity there.
FLOAT32_MAX = 3.4028234663852886e38


def _check_finite(config, names):
    """NaN and infinity pass every `<` and `>` test against them, so they are refused first."""
    for name in names:
        value = getattr(config, name)
        if not math.isfinite(value):
            raise InvalidInputError(f"--{name}={value} must be a finite number")
        if abs(value) > FLOAT32_MAX:
            raise InvalidInputError(f"--{name}={value} is beyond float32's range (about 3.4e38); use a smaller value")


@dataclasses.dataclass
class TokenizerConfig:
    # One of TOKENIZERS.
    tokenizer: str = "char"
    # Cap on the trained vocabulary, special tokens included. 0 means: every character seen
    # (char), 258 (byte, fixed), DEFAULT_SUBWORD_VOCABULARY_SIZE (wordpiece, sentencepiece).
    vocabulary_size: int = 0

    def validate(self):
        if self.tokenizer not in TOKENIZERS:
            raise InvalidInputError(
                f"--tokenizer={self.tokenizer!r} is not known; use one of {', '.join(TOKENIZERS)}"
            )
        if self.vocabulary_size < 0:
            raise InvalidInputError(
                f"--vocabulary_size={self.vocabulary_size} is negative; use 0 for the default or a positive cap"
            )
        if 0 < self.vocabulary_size < 3 and self.tokenizer in ("char", "wordpiece"):
            raise InvalidInputError(
                f"--vocabulary_size={self.vocabulary_size} leaves no room beside [PAD] and [UNK]; use at least 3"
            )


@dataclasses.dataclass
class ModelConfig:
    # One of MODELS.
    model: str = "transformer"
    # Filled in from the trained tokenizer; models never see the tokenizer itself.
    vocabulary_size: int = 0
    # Context window in tokens: the Transformer's position table and the training window.
    sequence_length: int = 64
    hidden_dim: int = 128
    # Width of the Transformer's feed-forward block; 0 means 4 * hidden_dim (GPT convention).
    intermediate_dim: int = 0
    num_layers: int = 4
    num_heads: int = 4
    dropout: float = 0.0

    def resolved_intermediate_dim(self):
        return self.intermediate_dim or 4 * self.hidden_dim

    def validate(self):
        _check_finite(self, ("dropout",))
        if self.model not in MODELS:
            raise InvalidInputError(f"--model={self.model!r} is not known; use one of {', '.join(MODELS)}")
        for name in ("hidden_dim", "num_layers", "num_heads"):
            value = getattr(self, name)
            if value < 1:
                raise InvalidInputError(f"--{name}={value} must be at least 1")
        if self.sequence_length < 2:
            raise InvalidInputError(f"--sequence_length={self.sequence_length} must be at least 2 (a token and its context)")
        if self.intermediate_dim < 0:
            raise InvalidInputError(f"--intermediate_dim={self.intermediate_dim} must be 0 (4 * hidden_dim) or positive")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"--dropout={self.dropout} must be in [0, 1)")
        if self.model == "transformer" and self.hidden_dim % self.num_heads:
            raise InvalidInputError(
                f"--hidden_dim={self.hidden_dim} is not divisible by --num_heads={self.num_heads}; "
                "each attention head gets hidden_dim / num_heads dimensions, so pick values that divide"
            )


@dataclasses.dataclass
class TrainConfig:
    train_data: str = ""
    # Empty: hold out the last 10% of --train_data (nanoGPT's convention).
    valid_data: str = ""
    batch_size: int = 12
    # Optimizer steps in the whole run; a resumed run stops at the same number.
    train_steps: int = 2000
    learning_rate: float = 1e-3
    # Cosine decay ends here (nanoGPT: learning_rate / 10).
    min_learning_rate: float = 1e-4
    # -1: 5% of train_steps, at most 100 (nanoGPT's 100 at 2000 steps).
    warmup_steps: int = -1
    weight_decay: float = 0.1
    # nanoGPT's character-level setting: beta_2 0.99 because batches are small and noisy.
    beta_1: float = 0.9
    beta_2: float = 0.99
    gradient_clip_norm: float = 1.0
    # Validate, log and checkpoint every this many steps (and at the last step).
    eval_interval: int = 250
    # Validation batches per evaluation; 0 means the whole held-out set.
    eval_steps: int = 0
    seed: int = 1337
    # None: the fastest setting measured for the model kind and device (see training.py).
    jit_compile: Optional[bool] = None
    steps_per_execution: int = 1
    mixed_precision: str = "none"

    def resolved_warmup_steps(self):
        if self.warmup_steps == -1:
            return min(100, self.train_steps // 20)
        return self.warmup_steps

    def validate(self):
        _check_finite(self, ("learning_rate", "min_learning_rate", "weight_decay", "beta_1", "beta_2", "gradient_clip_norm"))
        if not self.train_data:
            raise InvalidInputError("--train_data is required: a UTF-8 text file to train on")
        for name in ("batch_size", "train_steps", "eval_interval", "steps_per_execution"):
            value = getattr(self, name)
            if value < 1:
                raise InvalidInputError(f"--{name}={value} must be at least 1")
        if self.warmup_steps < -1:
            raise InvalidInputError(f"--warmup_steps={self.warmup_steps} must be -1 (automatic), 0 or positive")
        for name in ("eval_steps", "weight_decay", "gradient_clip_norm"):
            value = getattr(self, name)
            if value < 0:
                raise InvalidInputError(f"--{name}={value} must not be negative")
        if self.learning_rate <= 0:
            raise InvalidInputError(f"--learning_rate={self.learning_rate} must be positive")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise InvalidInputError(
                f"--min_learning_rate={self.min_learning_rate} must be between 0 and --learning_rate={self.learning_rate}"
            )
        if self.resolved_warmup_steps() >= self.train_steps:
            raise InvalidInputError(
                f"--warmup_steps={self.warmup_steps} must be smaller than --train_steps={self.train_steps}"
            )
        # beta = 1 freezes Adam's moment estimate at zero, and the update divides by it: NaN.
        for name in ("beta_1", "beta_2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise InvalidInputError(f"--{name}={value} must be in [0, 1) (0.9 and 0.99 are typical)")
        if not 0 <= self.seed <= MAX_SEED:
            raise InvalidInputError(f"--seed={self.seed} must be between 0 and {MAX_SEED}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise InvalidInputError(
                f"--mixed_precision={self.mixed_precision!r} is not known; use one of {', '.join(MIXED_PRECISION)}"
            )


@dataclasses.dataclass
class ExportConfig:
    # What serving_default does: prompt -> max_new_tokens tokens at this temperature.
    max_new_tokens: int = 100
    temperature: float = 0.8
    # The largest max_new_tokens a request may ask for.
    max_new_tokens_limit: int = 4096
    # Incremental decoding (Transformer key/value cache, LSTM state). False re-runs the model over
    # the context at every step: exact and slow, kept to measure the cache against.
    kv_cache: bool = True

    def validate(self):
        # A non-finite default temperature would make every serving_default request fail.
        _check_finite(self, ("temperature",))
        if not 1 <= self.max_new_tokens <= self.max_new_tokens_limit:
            raise InvalidInputError(
                f"--max_new_tokens={self.max_new_tokens} must be between 1 and {self.max_new_tokens_limit}"
            )
        if self.temperature < 0:
            raise InvalidInputError(f"--temperature={self.temperature} must be 0 (greedy) or positive")


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a training run; written to <work_dir>/config.json."""

    task: str = "lm"
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self):
        if self.task not in TASKS:
            raise InvalidInputError(f"--task={self.task!r} is not known; use one of {', '.join(TASKS)}")
        self.tokenizer.validate()
        self.model.validate()
        self.train.validate()

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data, source="config"):
        if not isinstance(data, dict):
            raise InvalidInputError(f"{source}: not a JSON object but {_json_type(data)}")
        sections = {"tokenizer": TokenizerConfig, "model": ModelConfig, "train": TrainConfig}
        kwargs = {}
        for key, value in data.items():
            if key in sections:
                kwargs[key] = _dataclass_from_dict(sections[key], value, f"{source}: {key}")
            elif key == "task":
                _check_type(value, str, f"{source}: task")
                kwargs[key] = value
            else:
                raise InvalidInputError(f"{source}: unknown field {key!r}")
        return cls(**kwargs)


def _json_type(value):
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", int: "an integer", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_type(value, annotation, where):
    """A JSON value against a dataclass field's type (int, float, str, bool or Optional of one)."""
    allowed = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    if value is None and type(None) in allowed:
        return
    for kind in allowed:
        # JSON has no int/bool distinction Python respects: true is not a count, 3 is a fine float.
        if kind is bool and isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind is str and isinstance(value, str):
            return
    expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
    raise InvalidInputError(f"{where} is {_json_type(value)} ({value!r}); expected {expected}")


def _dataclass_from_dict(cls, data, where):
    if not isinstance(data, dict):
        raise InvalidInputError(f"{where}: not a JSON object but {_json_type(data)}")
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InvalidInputError(f"{where}: unknown field(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        _check_type(value, hints[key], f"{where}.{key}")
    return cls(**data)


def write_json_atomic(path, data):
    """Writes JSON so that a reader (or a crash) never sees a half-written file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2, ensure_ascii=False)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        # A full disk or a permission error must not leave a stray temporary file.
        if os.path.exists(temporary):
            os.remove(temporary)
        if isinstance(error, OSError):
            # Name the file the user knows, not the temporary one.
            raise type(error)(error.errno, error.strerror, str(path)) from None
        raise


def save_run_config(config, path):
    write_json_atomic(path, config.to_dict())


def load_run_config(path):
    """Reads a config.json; anything unreadable is an InvalidInputError naming the file."""
    advice = "restore it from a backup or the export's assets/config.json, or delete the work directory to start over"
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{path}: not valid JSON ({error}); {advice}") from None
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot read ({error.strerror})") from None
    try:
        config = RunConfig.from_dict(data, source=path)
        config.tokenizer.validate()
        config.model.validate()
    except InvalidInputError as error:
        message = str(error) if str(error).startswith(str(path)) else f"{path}: {error}"
        raise InvalidInputError(f"{message}; {advice}") from None
    return config


def config_differences(old, new):
    """'--flag: old -> new' for every setting a checkpoint depends on that differs.

    The model and tokenizer define the variables; the mixed-precision policy changes the
    optimizer's (a loss-scale wrapper). Other training settings may change between runs.
    """
    old_dict, new_dict = old.to_dict(), new.to_dict()
    pairs = [("task", old_dict["task"], new_dict["task"])]
    for section in ("tokenizer", "model"):
        pairs += [(key, value, new_dict[section].get(key)) for key, value in old_dict[section].items()]
    pairs.append(("mixed_precision", old_dict["train"]["mixed_precision"], new_dict["train"]["mixed_precision"]))
    return [f"--{key}: {old_value!r} -> {new_value!r}" for key, old_value, new_value in pairs if old_value != new_value]
