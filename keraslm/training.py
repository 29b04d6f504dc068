"""Trains a language model with model.fit in a work directory that survives crashes.

The work directory holds config.json, the trained tokenizer, checkpoints, metrics.json, TensorBoard
logs and a loss-curve PNG. Running the same command again resumes from the last checkpoint and stops
at the same --train_steps; training batches depend only on (seed, step), so the resumed run sees
the batches the interrupted one would have.
"""

import dataclasses
import os
import shutil
import sys
import time

import keras
import tensorflow as tf

from keraslm import data
from keraslm.config import RunConfig, config_differences, load_run_config, save_run_config
from keraslm.errors import InvalidInputError
from keraslm.models import build_model
from keraslm.run_log import RunLog
from keraslm.tokenizers import load_tokenizer, train_tokenizer

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
# Validation batches are larger than training ones: no gradients, and fewer steps to run.
MIN_EVAL_BATCH_SIZE = 64


@dataclasses.dataclass
class TrainResult:
    work_dir: str
    step: int
    train_loss: float
    val_loss: float
    # Wall time of this invocation, and of its optimizer steps alone (compilation included).
    wall_seconds: float
    train_seconds: float
    steps_run: int

    @property
    def ms_per_step(self):
        return 1000.0 * self.train_seconds / self.steps_run if self.steps_run else float("nan")


def resolve_jit_compile(config):
    """XLA on or off: the explicit --jit_compile, else what measured fastest (BENCHMARKS.md).

    Keras leaves XLA off on CPU unless asked. On this 2-core CPU XLA cut the Transformer's step
    from ~35 to ~24 ms once compiled. On a GPU the cuDNN LSTM kernel cannot be compiled by XLA,
    so the LSTM keeps XLA off there.
    """
    if config.train.jit_compile is not None:
        return config.train.jit_compile
    if config.model.model == "lstm":
        return not tf.config.list_physical_devices("GPU")
    return True


def make_optimizer(train):
    """AdamW with linear warmup then cosine decay to min_learning_rate, as nanoGPT."""
    warmup_steps = train.resolved_warmup_steps()
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else train.learning_rate,
        warmup_target=train.learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
        decay_steps=train.train_steps - warmup_steps,
        alpha=train.min_learning_rate / train.learning_rate,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=train.weight_decay,
        beta_1=train.beta_1,
        beta_2=train.beta_2,
        epsilon=1e-8,
        global_clipnorm=train.gradient_clip_norm or None,
    )
    # Biases and normalization scales are not decayed (GPT-2 / nanoGPT practice).
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def build_compiled_model(config):
    keras.mixed_precision.set_dtype_policy(
        "float32" if config.train.mixed_precision == "none" else config.train.mixed_precision
    )
    model = build_model(config.model)
    optimizer = make_optimizer(config.train)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=resolve_jit_compile(config),
        steps_per_execution=config.train.steps_per_execution,
    )
    # Optimizer slots exist before any step, so a checkpoint can be restored into them. Under
    # mixed_float16, compile wrapped the optimizer in a LossScaleOptimizer: build that one.
    model.optimizer.build(model.trainable_variables)
    return model


def _read_corpora(config):
    train_text = data.read_text_file(config.train.train_data, "--train_data")
    if config.train.valid_data:
        return train_text, data.read_text_file(config.train.valid_data, "--valid_data")
    return data.split_for_validation(train_text)


def _check_resumable(work_dir, config):
    """Returns the saved config when work_dir holds a run this config can continue."""
    path = os.path.join(work_dir, CONFIG_FILE)
    if os.path.exists(work_dir) and not os.path.isdir(work_dir):
        raise InvalidInputError(f"--work_dir={work_dir} is a file, not a directory; pick another --work_dir")
    if not os.path.exists(path):
        if os.path.isdir(work_dir) and os.listdir(work_dir):
            raise InvalidInputError(
                f"--work_dir={work_dir} exists, is not empty and has no {CONFIG_FILE}; "
                "it is not a keraslm work directory, so pick another --work_dir"
            )
        return None
    saved = load_run_config(path)
    candidate = dataclasses.replace(config, model=dataclasses.replace(config.model, vocabulary_size=saved.model.vocabulary_size))
    differences = config_differences(saved, candidate)
    if differences:
        raise InvalidInputError(
            f"--work_dir={work_dir} holds a run with other settings ({'; '.join(differences)}); "
            "use a new --work_dir, or delete this one to start over"
        )
    return saved


def _prepare_work_dir(config, work_dir, train_text, valid_text):
    """Trains the tokenizer, tokenizes the corpora and writes config.json.

    A new work directory appears only once all of this has succeeded, so bad input leaves nothing
    behind.
    """
    saved = _check_resumable(work_dir, config)
    staging = work_dir if saved else f"{os.path.normpath(work_dir)}.tmp-{os.getpid()}"
    try:
        tokenizer_dir = os.path.join(staging, TOKENIZER_DIR)
        if os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
            tokenizer = load_tokenizer(tokenizer_dir)
        else:
            os.makedirs(staging, exist_ok=True)
            tokenizer = train_tokenizer(config.tokenizer, train_text, tokenizer_dir)
        config.model.vocabulary_size = tokenizer.vocabulary_size
        train_ids = data.tokenize_text(tokenizer, train_text)
        valid_ids = data.tokenize_text(tokenizer, valid_text)
        train_source = config.train.train_data
        valid_source = config.train.valid_data or f"the held-out last 10% of {train_source}"
        data.check_long_enough(train_ids, config.model.sequence_length, "--train_data", train_source)
        data.check_long_enough(valid_ids, config.model.sequence_length, "validation text", valid_source)
        save_run_config(config, os.path.join(staging, CONFIG_FILE))
    except BaseException:
        if not saved:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if not saved:
        os.replace(staging, work_dir)
    return train_ids, valid_ids


class _ProgressBar(keras.callbacks.Callback):
    """One bar for the whole run (Keras' own restarts at every fit call)."""

    def __init__(self, progbar, first_step):
        super().__init__()
        self.progbar = progbar
        self.first_step = first_step

    def on_train_batch_end(self, batch, logs=None):
        self.progbar.update(self.first_step + batch + 1, [("loss", float(logs["loss"]))])


def train(config: RunConfig, work_dir, verbose=True):
    """Trains (or resumes) the run described by `config` in `work_dir`; returns a TrainResult."""
    started = time.perf_counter()
    config.validate()
    train_text, valid_text = _read_corpora(config)
    train_ids, valid_ids = _prepare_work_dir(config, work_dir, train_text, valid_text)
    train = config.train
    keras.utils.set_random_seed(train.seed)
    model = build_compiled_model(config)

    # Steps taken, counted apart from optimizer.iterations: under mixed_float16 the loss-scale
    # optimizer does not count the steps it skips on overflow, and the data index must not lag.
    steps_taken = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_taken")
    checkpoint = tf.train.Checkpoint(
        model=model,
        optimizer=model.optimizer,
        steps_taken=steps_taken,
        # Dropout's random streams: without them a resumed run would draw other masks.
        random_state=[variable for variable in model.variables if variable.path.endswith("seed_generator_state")],
    )
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(work_dir, CHECKPOINT_DIR), max_to_keep=3)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if int(steps_taken.numpy()) == 0:
            # A checkpoint from before steps_taken existed: the optimizer counted the steps.
            steps_taken.assign(int(model.optimizer.iterations))
    step = int(steps_taken.numpy())
    log = RunLog(work_dir, step)
    eval_batch_size = max(train.batch_size, MIN_EVAL_BATCH_SIZE)
    eval_dataset = data.evaluation_dataset(valid_ids, config.model.sequence_length, eval_batch_size, train.eval_steps)
    if verbose:
        resumed = f", resuming from step {step}" if step else ""
        print(
            f"keraslm: {len(train_ids):,} training and {len(valid_ids):,} validation tokens, "
            f"vocabulary {config.model.vocabulary_size:,}, {model.count_params():,} parameters{resumed}",
            flush=True,
        )
    # A live bar on a terminal; in a log file the per-evaluation lines say the same.
    progbar = keras.utils.Progbar(train.train_steps, verbose=1 if verbose and sys.stdout.isatty() else 0)
    progbar.update(step)

    train_loss = val_loss = float("nan")
    train_seconds, first_step = 0.0, step
    while step < train.train_steps:
        # A segment ends at the next multiple of eval_interval (or the last step).
        segment_end = min(train.train_steps, (step // train.eval_interval + 1) * train.eval_interval)
        segment_steps = segment_end - step
        dataset = data.language_model_dataset(
            train_ids, config.model.sequence_length, train.batch_size, train.seed, step, segment_steps
        )
        segment_started = time.perf_counter()
        history = model.fit(
            dataset,
            epochs=1,
            steps_per_epoch=segment_steps,
            verbose=0,
            shuffle=False,
            callbacks=[_ProgressBar(progbar, step)],
        )
        segment_seconds = time.perf_counter() - segment_started
        train_seconds += segment_seconds
        step = segment_end
        steps_taken.assign(step)
        train_loss = float(history.history["loss"][-1])
        val_loss = float(model.evaluate(eval_dataset, verbose=0, return_dict=True)["loss"])
        record = {
            "step": step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "learning_rate": float(model.optimizer.learning_rate),
            "ms_per_step": 1000.0 * segment_seconds / segment_steps,
            "tokens_per_second": segment_steps * train.batch_size * config.model.sequence_length / segment_seconds,
            "elapsed_seconds": time.perf_counter() - started,
        }
        # Metrics first, checkpoint second: a crash between the two resumes from the previous
        # checkpoint, and RunLog forgets the record that is about to be measured again.
        log.add(record)
        manager.save(checkpoint_number=step)
        if verbose:
            progbar.update(step, [("loss", train_loss)], finalize=step >= train.train_steps)
            print(
                f"{chr(10) if progbar.verbose else ''}step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                f"{record['ms_per_step']:.1f} ms/step",
                flush=True,
            )
    if step == first_step and log.records:
        # Nothing left to do: report the finished run.
        train_loss, val_loss = log.records[-1]["train_loss"], log.records[-1]["val_loss"]
    return TrainResult(
        work_dir=work_dir,
        step=step,
        train_loss=train_loss,
        val_loss=val_loss,
        wall_seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        steps_run=step - first_step,
    )


def load_trained_model(work_dir, use_cudnn="auto"):
    """Rebuilds the model from <work_dir>/config.json and restores its latest checkpoint.

    use_cudnn=False builds LSTM layers that never pick the cuDNN kernel, for SavedModels that
    must run on CPU-only servers whatever machine exported them.
    """
    path = os.path.join(work_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise InvalidInputError(f"--work_dir={work_dir} has no {CONFIG_FILE}; pass a directory written by keraslm-train")
    config = load_run_config(path)
    # Exports run in float32 whatever the training policy was; the weights are float32 anyway.
    keras.mixed_precision.set_dtype_policy("float32")
    model = build_model(config.model, use_cudnn=use_cudnn)
    latest = tf.train.latest_checkpoint(os.path.join(work_dir, CHECKPOINT_DIR))
    if latest is None:
        raise InvalidInputError(f"--work_dir={work_dir} has no checkpoint yet; train it first with keraslm-train")
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    tokenizer = load_tokenizer(os.path.join(work_dir, TOKENIZER_DIR))
    return config, model, tokenizer
