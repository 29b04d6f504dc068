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

TASKS = ("lm", "mlm", "classify", "seq2seq")
# Tasks that pretrain a backbone on raw text, which --task=classify --init_from can start from.
PRETRAINING_TASKS = ("lm", "mlm")
TOKENIZERS = ("char", "byte", "wordpiece", "sentencepiece")
MODELS = ("transformer", "lstm")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
# tf.distribute strategies (keraslm.distribution).
STRATEGIES = ("default", "mirrored", "multi_worker")
TRUNCATIONS = ("head", "head_tail")

# Vocabulary cap used when --vocabulary_size is 0 for the tokenizers that must have one.
DEFAULT_SUBWORD_VOCABULARY_SIZE = 8000

# keras.utils.set_random_seed seeds numpy, whose seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1

# config.json's layout. 2: checkpoints keep the backbone apart from the task's head (keraslm
# 0.2); 1 (no such field): one Keras model per checkpoint (keraslm 0.1).
FORMAT_VERSION = 2

# Beam search keeps num_beams hypotheses per sentence, each with its own key/value cache.
MAX_BEAMS = 64
# keraslm-export --format: a SavedModel in TF Serving layout, or a LiteRT (TFLite) flatbuffer.
EXPORT_FORMATS = ("saved_model", "tflite")
# keraslm-export --quantize: int8 weights in a SavedModel; dynamic-range or full-integer LiteRT.
QUANTIZE_MODES = ("none", "int8", "dynamic_range", "full_integer")

# Settings become float32 tensors: a larger magnitude turns into infinity there.
FLOAT32_MAX = 3.4028234663852886e38


def setting(default, help, choices=None, flag=True, repeatable=False):  # pylint: disable=redefined-builtin
    """A dataclass field that is also a command-line flag: declared once, here.

    keraslm.cli.flags derives each command's flags (name, type, default, help, choices) from these
    fields and builds the config back from the parsed flags. flag=False: set by keraslm itself
    (e.g. the vocabulary size the trained tokenizer ended up with), never by a user.
    repeatable (strings): the flag may be given several times; the values are joined with commas.
    """
    metadata = {"help": help, "choices": choices, "flag": flag, "repeatable": repeatable}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


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
    tokenizer: str = setting("char", "How text becomes ids; trained on --train_data.", choices=TOKENIZERS)
    vocabulary_size: int = setting(
        0,
        "Vocabulary cap incl. special tokens. 0: every character (char), 258 (byte), "
        f"{DEFAULT_SUBWORD_VOCABULARY_SIZE} (wordpiece, sentencepiece).",
    )
    lowercase: bool = setting(
        False, "Lowercase the text (Unicode-aware) before tokenizing: in training, evaluation and the export."
    )
    strip_markup: bool = setting(
        False,
        "Replace HTML/XML tags such as <br /> with a space before tokenizing: in training, evaluation and the export.",
    )

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
    model: str = setting(
        "transformer",
        "Backbone: transformer (keras-nlp decoder for --task=lm, encoder for --task=classify) or lstm "
        "(bidirectional for --task=classify, unless fine-tuned from a causal --task=lm run).",
        choices=MODELS,
    )
    # Filled in from the trained tokenizer; models never see the tokenizer itself.
    vocabulary_size: int = setting(0, "The trained tokenizer's vocabulary size.", flag=False)
    sequence_length: int = setting(
        64, "Context window in tokens: the LM's training window; a classifier's longest text (longer ones are cut)."
    )
    hidden_dim: int = setting(128, "Width of embeddings and hidden states.")
    intermediate_dim: int = setting(0, "Transformer feed-forward width; 0 means 4 * hidden_dim.")
    num_layers: int = setting(4, "Number of Transformer blocks or LSTM layers.")
    num_heads: int = setting(4, "Attention heads per Transformer block; must divide --hidden_dim.")
    dropout: float = setting(0.0, "Dropout rate in [0, 1); 0 for small data and short runs.")
    # None: as the task needs (lm: causal; mlm and classify: bidirectional). A classifier
    # fine-tuned from a causal LM keeps its backbone's direction (keraslm.pretrained).
    causal: Optional[bool] = setting(None, "Whether the backbone sees only the past.", flag=False)
    # masked-LM pretraining reserves one id past the tokenizer's vocabulary for [MASK]; a
    # classifier fine-tuned from it keeps the embedding row.
    extra_ids: int = setting(0, "Ids the model reserves past the tokenizer's vocabulary ([MASK]).", flag=False)
    truncation: str = setting(
        "head",
        "--task=classify: what a text longer than --sequence_length tokens keeps: head (its first tokens) or "
        "head_tail (the first quarter and the last three quarters of --sequence_length; long reviews end with "
        "their verdict).",
        choices=TRUNCATIONS,
    )

    def resolved_intermediate_dim(self):
        return self.intermediate_dim or 4 * self.hidden_dim

    def validate(self):
        _check_finite(self, ("dropout",))
        if self.model not in MODELS:
            raise InvalidInputError(f"--model={self.model!r} is not known; use one of {', '.join(MODELS)}")
        if self.truncation not in TRUNCATIONS:
            raise InvalidInputError(
                f"--truncation={self.truncation!r} is not known; use one of {', '.join(TRUNCATIONS)}"
            )
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
    train_data: str = setting(
        "",
        "File(s) to train on (required). --task=lm and mlm: UTF-8 text, or the text column of CSV/TSV/JSONL(.gz) "
        "files; several files (comma-separated, or the flag repeated) and glob patterns ('corpus/*.txt.gz', quoted) "
        "are read as one corpus. --task=classify: a "
        "CSV, TSV or JSONL file (optionally .gz) with a header and a text and a label column.",
        repeatable=True,
    )
    valid_data: str = setting(
        "",
        "File to validate on, like --train_data. Empty: hold out the last --valid_fraction of the text (lm), "
        "or a seeded, stratified --valid_fraction of the examples (classify).",
    )
    valid_fraction: float = setting(
        0.1, "Without --valid_data: the share of --train_data held out for validation, in (0, 1)."
    )
    text_column: str = setting(
        "",
        "The column (field) holding the text of a CSV/TSV/JSONL file (for --task=lm and mlm, the text they read). "
        "Empty: text, sentence, review, content or document.",
    )
    label_column: str = setting("label", "--task=classify: the column (field) holding the label (strings or integers).")
    source_column: str = setting(
        "",
        "--task=seq2seq: the column holding the sentence to translate: a header column or JSONL field name, or a "
        "position counted from 1 (a CSV/TSV file read by positions has no header row). Empty: 'source'; 1 in a .txt "
        "file (tab-separated, no header row, columns after the second ignored) or when --target_column is a position.",
    )
    target_column: str = setting(
        "",
        "--task=seq2seq: the column holding its translation, a name or a position like --source_column (both names "
        "or both positions). Empty: 'target'; 2 in a .txt file or when --source_column is a position.",
    )
    init_from: str = setting(
        "",
        "--task=classify: the work directory of a pretraining run (--task=mlm or lm). Its tokenizer and trained "
        "backbone start this classifier under a new head; its model and tokenizer settings are used.",
    )
    freeze_steps: int = setting(
        0, "With --init_from: train only the new head for this many steps, then the whole model."
    )
    teacher: str = setting(
        "",
        "--task=classify: distill from this teacher, a classifier's export (a SavedModel version directory, or its "
        "base directory for the newest version) or training work directory with the same label names. The student "
        "learns from the teacher's softened scores (--distill_temperature) and the true labels (--distill_alpha).",
    )
    distill_temperature: float = setting(
        2.0, "With --teacher: softmax temperature of the teacher's and the student's soft scores (> 0; 1: as is)."
    )
    distill_alpha: float = setting(
        0.5,
        "With --teacher: the weight of the teacher's soft labels in the loss, in [0, 1]; the true labels get 1 - this.",
    )
    prune_sparsity: float = setting(
        0.0,
        "Magnitude pruning: the share of each kernel and embedding's weights set to zero by the end of pruning, in "
        "[0, 1). 0: no pruning. Biases and norms are never pruned.",
    )
    prune_begin_step: int = setting(0, "With --prune_sparsity: the step pruning starts (sparsity 0 before it).")
    prune_end_step: int = setting(
        -1,
        "With --prune_sparsity: the step the target sparsity is reached (a cubic ramp from --prune_begin_step, as "
        "TF Model Optimization's PolynomialDecay); after it the pruned weights stay zero. -1: 3/4 of --train_steps.",
    )
    prune_frequency: int = setting(
        50, "With --prune_sparsity: recompute the pruning masks every this many steps during the ramp."
    )
    batch_size: int = setting(
        12,
        "Windows (lm, mlm) or examples (classify) per forward/backward pass; an optimizer step reads "
        "--grad_accum_steps of these batches. The global batch: with --strategy=mirrored or multi_worker it is split "
        "evenly over all replicas (so it must be a multiple of their number).",
    )
    # The step's examples are those of one --batch_size=batch_size × N batch, so a run may resume
    # with another split of the same product (keraslm.gradient_accumulation).
    grad_accum_steps: int = setting(
        1,
        "Gradient accumulation: each optimizer step averages the gradients of this many batches of --batch_size, "
        "so the effective batch is --batch_size × this with the memory of one --batch_size batch. 1: none.",
    )
    train_steps: int = setting(2000, "Optimizer steps in the whole run (a resumed run ends here too).")
    learning_rate: float = setting(1e-3, "Peak AdamW learning rate, reached after --warmup_steps.")
    # Cosine decay ends here (nanoGPT: learning_rate / 10).
    min_learning_rate: float = setting(1e-4, "Learning rate at the end of the cosine decay.")
    # -1: 5% of train_steps, at most 100 (nanoGPT's 100 at 2000 steps).
    warmup_steps: int = setting(
        -1, "Steps of linear learning-rate warmup from 0; -1: 5% of --train_steps, at most 100."
    )
    weight_decay: float = setting(0.1, "AdamW decoupled weight decay (not applied to biases and norms).")
    # nanoGPT's character-level setting: beta_2 0.99 because batches are small and noisy.
    beta_1: float = setting(0.9, "AdamW first-moment decay.")
    beta_2: float = setting(0.99, "AdamW second-moment decay.")
    gradient_clip_norm: float = setting(1.0, "Clip the global gradient norm to this; 0 turns clipping off.")
    eval_interval: int = setting(250, "Validate, log and checkpoint every this many steps (and at the last step).")
    eval_steps: int = setting(0, "Validation batches per evaluation; 0 means the whole validation set.")
    seed: int = setting(1337, "Random seed: same seed and flags give the same run.")
    jit_compile: Optional[bool] = setting(
        None, "Compile train steps with XLA. Unset: the fastest measured choice for --model and the device."
    )
    steps_per_execution: int = setting(1, "Optimizer steps per call into the compiled graph.")
    mixed_precision: str = setting(
        "none", "Keras dtype policy; mixed_float16 for CUDA GPUs.", choices=MIXED_PRECISION
    )
    strategy: str = setting(
        "default",
        "Devices and machines to train on, with tf.distribute: default (one device); mirrored (MirroredStrategy "
        "over every local GPU, or over --num_cpu_devices logical CPUs); multi_worker (MultiWorkerMirroredStrategy "
        "over the cluster the TF_CONFIG environment variable describes: run the same command on every machine, "
        "with a --work_dir they all share). --batch_size stays the global batch, split evenly over all replicas.",
        choices=STRATEGIES,
    )
    num_cpu_devices: int = setting(
        0, "--strategy=mirrored: mirror over this many logical CPU devices (for testing without GPUs). 0: the GPUs."
    )

    def _validate_strategy(self):
        """What Keras 3.15's model.fit cannot run under a tf.distribute strategy, refused up front."""
        if self.strategy not in STRATEGIES:
            raise InvalidInputError(f"--strategy={self.strategy!r} is not known; use one of {', '.join(STRATEGIES)}")
        if self.num_cpu_devices < 0:
            raise InvalidInputError(f"--num_cpu_devices={self.num_cpu_devices} must not be negative")
        if self.num_cpu_devices and self.strategy != "mirrored":
            raise InvalidInputError(
                f"--num_cpu_devices={self.num_cpu_devices} is for --strategy=mirrored (now --strategy={self.strategy})"
            )
        if self.strategy == "default":
            return
        if self.jit_compile:
            # Keras wraps the whole distributed step (every replica's) in one XLA function, which
            # cannot reach the other devices' variables; Keras itself turns XLA off under a strategy.
            raise InvalidInputError(
                f"--jit_compile=true does not work with --strategy={self.strategy} (Keras compiles every replica's "
                "step as one XLA program on one device); leave --jit_compile unset or false"
            )
        if self.steps_per_execution > 1:
            # Keras' multi-step loop over a distributed iterator fails to run (keras-team/keras#19246).
            raise InvalidInputError(
                f"--steps_per_execution={self.steps_per_execution} does not work with --strategy={self.strategy} "
                "in Keras 3 (keras-team/keras#19246); use --steps_per_execution=1"
            )

    def resolved_warmup_steps(self):
        if self.warmup_steps == -1:
            return min(100, self.train_steps // 20)
        return self.warmup_steps

    def resolved_prune_end_step(self):
        if self.prune_end_step == -1:
            return self.train_steps * 3 // 4
        return self.prune_end_step

    def _validate_pruning(self):
        _check_finite(self, ("prune_sparsity",))
        if not 0 <= self.prune_sparsity < 1:
            raise InvalidInputError(
                f"--prune_sparsity={self.prune_sparsity} must be in [0, 1): the share of weights set to zero (0: no pruning)"
            )
        if not self.prune_sparsity:
            # The schedule flags alone would silently do nothing.
            defaults = {field.name: field.default for field in dataclasses.fields(self)}
            for name in ("prune_begin_step", "prune_end_step", "prune_frequency"):
                if getattr(self, name) != defaults[name]:
                    raise InvalidInputError(f"--{name}={getattr(self, name)} needs --prune_sparsity (the share of weights to prune)")
            return
        if self.prune_frequency < 1:
            raise InvalidInputError(f"--prune_frequency={self.prune_frequency} must be at least 1")
        if self.prune_begin_step < 0:
            raise InvalidInputError(f"--prune_begin_step={self.prune_begin_step} must not be negative")
        if self.prune_end_step < -1:
            raise InvalidInputError(f"--prune_end_step={self.prune_end_step} must be -1 (3/4 of --train_steps) or a step")
        end = self.resolved_prune_end_step()
        shown = f"--prune_end_step={self.prune_end_step}" + (f" (3/4 of --train_steps: {end})" if self.prune_end_step == -1 else "")
        if not self.prune_begin_step < end <= self.train_steps:
            raise InvalidInputError(
                f"{shown} must be after --prune_begin_step={self.prune_begin_step} and at most "
                f"--train_steps={self.train_steps}, or the target sparsity is never reached"
            )

    def validate(self):
        _check_finite(self, ("learning_rate", "min_learning_rate", "weight_decay", "beta_1", "beta_2", "gradient_clip_norm"))
        if not self.train_data:
            raise InvalidInputError("--train_data is required: the file to train on")
        for name in ("batch_size", "grad_accum_steps", "train_steps", "eval_interval", "steps_per_execution"):
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
        self._validate_strategy()
        _check_finite(self, ("valid_fraction",))
        if not self.valid_data and not 0 < self.valid_fraction < 1:
            raise InvalidInputError(f"--valid_fraction={self.valid_fraction} must be between 0 and 1 (0.1 holds out 10%)")
        if not self.label_column:
            raise InvalidInputError("--label_column is empty; name the column that holds the labels")
        if self.freeze_steps < 0:
            raise InvalidInputError(f"--freeze_steps={self.freeze_steps} must not be negative")
        if self.freeze_steps and not self.init_from:
            raise InvalidInputError(
                f"--freeze_steps={self.freeze_steps} needs --init_from: only a pretrained backbone is worth freezing"
            )
        if self.freeze_steps >= self.train_steps:
            raise InvalidInputError(
                f"--freeze_steps={self.freeze_steps} must be smaller than --train_steps={self.train_steps}, "
                "or the backbone is never fine-tuned"
            )
        self._validate_pruning()
        self._validate_distillation()

    def _validate_distillation(self):
        _check_finite(self, ("distill_temperature", "distill_alpha"))
        if self.distill_temperature <= 0:
            raise InvalidInputError(
                f"--distill_temperature={self.distill_temperature} must be positive (1: the teacher's scores as they are; "
                "2-4 soften them)"
            )
        if not 0 <= self.distill_alpha <= 1:
            raise InvalidInputError(
                f"--distill_alpha={self.distill_alpha} must be in [0, 1]: the share of the loss that follows the "
                "teacher (the true labels get the rest)"
            )
        # As --freeze_steps without --init_from: a setting that would silently do nothing is refused.
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        for name in ("distill_temperature", "distill_alpha"):
            if not self.teacher and getattr(self, name) != defaults[name]:
                raise InvalidInputError(f"--{name}={getattr(self, name)} needs --teacher: the classifier to distill from")


@dataclasses.dataclass
class ExportConfig:
    max_new_tokens: int = setting(100, "Language models: tokens serving_default generates per prompt.")
    temperature: float = setting(0.8, "Language models: sampling temperature of serving_default; 0 is greedy.")
    max_new_tokens_limit: int = setting(4096, "Language models: the largest max_new_tokens a request may ask for.")
    kv_cache: bool = setting(
        True,
        "Language and translation models: incremental decoding (Transformer key/value cache, LSTM state). "
        "false: recompute the context every step (exact, slow).",
    )
    num_beams: int = setting(
        4, "Translation models: beams of serving_default's beam search (1: greedy decoding)."
    )
    length_penalty: float = setting(
        0.6,
        "Translation models: serving_default's beam-search length penalty alpha; hypotheses are ranked by "
        "log-probability / ((5 + length) / 6) ** alpha (0: the plain sum, which favours short translations).",
    )

    format: str = setting(
        "saved_model",
        "saved_model: a SavedModel in TF Serving layout (raw strings in). tflite: a LiteRT (TFLite) model for edge "
        "devices, <export_dir>/<version>/model.tflite with its vocabulary and labels (classifiers).",
        choices=EXPORT_FORMATS,
    )
    quantize: str = setting(
        "none",
        "none: float32 weights. int8 (--format=saved_model): Dense, EinsumDense, Embedding and LSTM weights stored "
        "as int8 with per-channel scales. dynamic_range / full_integer (--format=tflite): LiteRT's int8 weights, "
        "or int8 weights and activations calibrated on --representative_examples texts of the training data.",
        choices=QUANTIZE_MODES,
    )
    representative_examples: int = setting(
        200, "--quantize=full_integer: training examples that calibrate the activation ranges."
    )

    def validate(self):
        # A non-finite default temperature would make every serving_default request fail.
        _check_finite(self, ("temperature",))
        if not 1 <= self.max_new_tokens <= self.max_new_tokens_limit:
            raise InvalidInputError(
                f"--max_new_tokens={self.max_new_tokens} must be between 1 and {self.max_new_tokens_limit}"
            )
        if self.temperature < 0:
            raise InvalidInputError(f"--temperature={self.temperature} must be 0 (greedy) or positive")
        _check_finite(self, ("length_penalty",))
        if not 1 <= self.num_beams <= MAX_BEAMS:
            raise InvalidInputError(f"--num_beams={self.num_beams} must be between 1 (greedy) and {MAX_BEAMS}")
        if self.format not in EXPORT_FORMATS:
            raise InvalidInputError(f"--format={self.format!r} is not known; use one of {', '.join(EXPORT_FORMATS)}")
        if self.quantize not in QUANTIZE_MODES:
            raise InvalidInputError(f"--quantize={self.quantize!r} is not known; use one of {', '.join(QUANTIZE_MODES)}")
        # Each format has its own quantizations; a mode of the other format would be ignored.
        if self.format == "saved_model" and self.quantize in ("dynamic_range", "full_integer"):
            raise InvalidInputError(
                f"--quantize={self.quantize} is a LiteRT quantization: add --format=tflite, or use --quantize=int8 "
                "for a SavedModel with int8 weights"
            )
        if self.format == "tflite" and self.quantize == "int8":
            raise InvalidInputError(
                "--quantize=int8 is for SavedModels; with --format=tflite use --quantize=dynamic_range (int8 weights) "
                "or --quantize=full_integer (int8 weights and activations)"
            )
        if self.representative_examples < 1:
            raise InvalidInputError(f"--representative_examples={self.representative_examples} must be at least 1")


# The sections of a RunConfig, in config.json order.
SECTIONS = {"tokenizer": TokenizerConfig, "model": ModelConfig, "train": TrainConfig}


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a training run; written to <work_dir>/config.json."""

    task: str = setting(
        "lm",
        "What to train: lm = a (causal) language model on raw text; mlm = masked-LM pretraining of the Transformer "
        "encoder on raw text; classify = a text classifier on labelled examples; seq2seq = a translation model "
        "(encoder-decoder) on sentence pairs.",
        choices=TASKS,
    )
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    # Classifiers: the label names, sorted, from the training file; the model's class order.
    labels: list = setting([], "The classifier's label names.", flag=False)
    format_version: int = setting(FORMAT_VERSION, "config.json layout.", flag=False)

    def validate(self):
        if self.task not in TASKS:
            raise InvalidInputError(f"--task={self.task!r} is not known; use one of {', '.join(TASKS)}")
        self.tokenizer.validate()
        self.model.validate()
        self.train.validate()
        if self.task == "mlm" and self.model.model != "transformer":
            raise InvalidInputError(
                f"--task=mlm pretrains the Transformer encoder, not --model={self.model.model}; "
                "pretrain an LSTM with --task=lm instead"
            )
        if self.model.truncation != "head" and self.task != "classify":
            raise InvalidInputError(
                f"--truncation={self.model.truncation} is for --task=classify; a --task={self.task} run "
                + ("cuts a long sentence to its first tokens" if self.task == "seq2seq" else "reads windows of its text")
                + ", so leave it out"
            )
        if self.task == "seq2seq" and self.train.strategy != "default":
            # Validation under MirroredStrategy fails in Keras 3.15 when the last batch of
            # padded target sequences splits unevenly over the replicas (AddN of two shapes).
            raise InvalidInputError(
                f"--strategy={self.train.strategy} does not work with --task=seq2seq yet (Keras fails to validate "
                "unevenly split batches of target sequences); train a translation model with --strategy=default"
            )
        if self.train.teacher and self.task != "classify":
            raise InvalidInputError(
                f"--teacher is for --task=classify (a classifier learning from another's scores), not --task={self.task}"
            )
        if self.train.init_from and self.task != "classify":
            raise InvalidInputError(
                f"--init_from is for --task=classify (fine-tuning a pretrained backbone), not --task={self.task}"
            )

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data, source="config"):
        if not isinstance(data, dict):
            raise InvalidInputError(f"{source}: not a JSON object but {_json_type(data)}")
        kwargs = {}
        for key, value in data.items():
            if key in SECTIONS:
                kwargs[key] = _dataclass_from_dict(SECTIONS[key], value, f"{source}: {key}")
            elif key in ("task", "format_version"):
                _check_type(value, str if key == "task" else int, f"{source}: {key}")
                kwargs[key] = value
            elif key == "labels":
                if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
                    raise InvalidInputError(f"{source}: labels is {_json_type(value)}; expected an array of strings")
                kwargs[key] = value
            else:
                raise InvalidInputError(f"{source}: unknown field {key!r}")
        # Written before format_version existed: keraslm 0.1.
        kwargs.setdefault("format_version", 1)
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
    """Writes JSON so that a reader (or a crash) never sees a half-written file (a device such as
    /dev/stdout, or a link's target, is written as it is: files.replaceable_path)."""
    from keraslm.files import replaceable_path

    shown, (path, atomic) = path, replaceable_path(path)
    if not atomic:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2, ensure_ascii=False)
            file.write("\n")
        return
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
            raise type(error)(error.errno, error.strerror, str(shown)) from None
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
    if config.format_version < FORMAT_VERSION:
        # Its checkpoints hold one whole model; this version restores backbone and head apart.
        raise InvalidInputError(
            f"{path}: this run was trained by keraslm 0.1, whose checkpoints this version cannot resume or export. "
            "Models it exported still load and serve unchanged. To go on training, start a new --work_dir "
            "(or export it first with keraslm 0.1)"
        )
    if config.format_version > FORMAT_VERSION:
        raise InvalidInputError(
            f"{path}: written by a newer keraslm (format {config.format_version}); upgrade keraslm to use this run"
        )
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
    if old_dict["task"] == new_dict["task"] == "seq2seq":
        # The columns say which side is translated into which: swapping them would go on
        # training the other direction.
        pairs += [(key, old_dict["train"][key], new_dict["train"][key]) for key in ("source_column", "target_column")]
    differences = [
        f"--{key}: {old_value!r} -> {new_value!r}"
        for key, old_value, new_value in pairs
        if old_value != new_value and key not in _SET_BY_PRETRAINING
    ]
    same_task = old_dict["task"] == new_dict["task"]  # Else the task's own ids differ, not a pretraining.
    if same_task and any(old_dict["model"].get(key) != new_dict["model"].get(key) for key in _SET_BY_PRETRAINING):
        # Not flags: they follow from what the backbone was pretrained by.
        differences.append(
            f"--init_from: a backbone pretrained by another task ({old_dict['train']['init_from'] or 'none'!r} -> "
            f"{new_dict['train']['init_from'] or 'none'!r})"
        )
    return differences


# Model settings that --init_from sets (the backbone's direction, the [MASK] id), not a flag.
_SET_BY_PRETRAINING = ("causal", "extra_ids")
