"""The one training loop every task runs: model.fit in a work directory that survives crashes.

The work directory holds config.json, the trained tokenizer, checkpoints, metrics.json, TensorBoard
logs and a loss-curve PNG. Running the same command again resumes from the last checkpoint and stops
at the same --train_steps; training batches depend only on (seed, step), so the resumed run sees
the batches the interrupted one would have. What differs between tasks (data, head, loss, metrics,
export) comes from keraslm.tasks.

Checkpoints keep the backbone apart from the task's head ("backbone/...", "head/<layer>/..."),
so that a backbone trained by one task can be restored under another task's head.

Under --strategy=mirrored or multi_worker (keraslm.distribution) the model, optimizer and step
counter are built in the strategy's scope and model.fit splits each global batch over the
replicas; in a multi-worker run every worker trains, and only the chief writes the work directory.
"""

import dataclasses
import math
import os
import sys
import time
import typing

import keras
import tensorflow as tf

from keraslm import checkpoints, distillation, distribution, gradient_accumulation, pretrained as pretrained_lib, pruning, run_log
from keraslm.config import RunConfig, load_run_config, save_run_config
from keraslm.errors import InvalidInputError, TrainingDivergedError
from keraslm.files import is_disk_full
from keraslm.run_log import RunLog
from keraslm.tasks import get_task
from keraslm.token_store import Storage
from keraslm.tokenizers import load_tokenizer, train_tokenizer
from keraslm.work_dir import CHECKPOINT_DIR, CONFIG_FILE, TOKENIZER_DIR, TOKENS_DIR, WorkDir


@dataclasses.dataclass
class TrainResult:
    work_dir: str
    step: int
    train_loss: float
    val_loss: float
    # Every validation metric of the last evaluation ("loss", and "accuracy" for classifiers).
    val_metrics: dict
    # Wall time of this invocation, and of its optimizer steps alone (compilation included).
    wall_seconds: float
    train_seconds: float
    steps_run: int
    # False on a multi-worker run's other workers: the chief reports and exports.
    chief: bool = True
    # The tf.distribute strategy trained under (keraslm.distribution.wait_for_each_other).
    strategy: object = dataclasses.field(default=None, repr=False, compare=False)

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
    if config.train.strategy != "default":
        # Keras compiles the whole distributed step as one XLA program, which cannot reach the
        # other replicas' variables (--jit_compile=true is refused there: TrainConfig).
        return False
    if config.task in ("classify", "seq2seq"):
        # Classifier and translation batches are cut to their longest text, so their width varies, and XLA
        # compiles once per width: a tiny Transformer classifier's first segments ran at 1.4-5.7
        # s/step with XLA against 0.01-0.19 without, and the bidirectional LSTM's step was about
        # 4x slower with XLA even at a fixed width (1.9 s against 0.47 s per batch of 64, one core).
        return False
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
    # Keras' AdamW, with gradient clipping that also holds under tf.distribute (keraslm.distribution).
    optimizer = distribution.AdamW(
        learning_rate=schedule,
        weight_decay=train.weight_decay,
        beta_1=train.beta_1,
        beta_2=train.beta_2,
        epsilon=1e-8,
        global_clipnorm=train.gradient_clip_norm or None,
    )
    # Biases and normalization scales are not decayed (GPT-2 / nanoGPT practice).
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if train.mixed_precision == "mixed_float16":
        # The loss-scale wrapper compile would add, but deciding on overflow for all replicas
        # together (keraslm.distribution).
        optimizer = distribution.LossScaleOptimizer(optimizer, name="loss_scale_optimizer")
    return optimizer


def split_model(model):
    """(backbone, head): the model's "backbone" layer, and its other layers with weights by name."""
    backbone = model.get_layer("backbone")
    head = {layer.name: layer for layer in model.layers if layer is not backbone and layer.weights}
    return backbone, head


def build_compiled_model(config, task=None):
    """The task's model, compiled with its loss and metrics, and with the optimizer built."""
    task = task or get_task(config.task)
    keras.mixed_precision.set_dtype_policy(
        "float32" if config.train.mixed_precision == "none" else config.train.mixed_precision
    )
    model = task.build_model(config)
    model.compile(
        optimizer=make_optimizer(config.train),
        jit_compile=resolve_jit_compile(config),
        steps_per_execution=config.train.steps_per_execution,
        **task.compile_args(config),
    )
    if config.train.grad_accum_steps > 1:
        gradient_accumulation.accumulate_gradients(model, config.train.grad_accum_steps)
    # Optimizer slots exist before any step, so a checkpoint can be restored into them. Under
    # mixed_float16 the optimizer is a LossScaleOptimizer (make_optimizer): build that one.
    model.optimizer.build(model.trainable_variables)
    return model


def _check_vocabulary(tokenizer, model, where, whose):
    """A run's tokenizer/ must be the one its config.json was trained with (plus extra_ids)."""
    expected = model.vocabulary_size - model.extra_ids
    if tokenizer.vocabulary_size != expected:
        raise InvalidInputError(
            f"{where}: {TOKENIZER_DIR}/ has {tokenizer.vocabulary_size} tokens but {whose}{CONFIG_FILE} was trained "
            f"with {expected}; put the run's own {TOKENIZER_DIR}/ back"
        )


def _prepare_work_dir(directory, config, task, corpora, say, pretrained=None, chief=True, verbose=True):
    """Loads (resume), copies (--init_from) or trains (new run) the tokenizer; tokenizes the corpora.

    A new run's tokenizer and config.json are staged and move into place only once all of this
    has succeeded, so bad input leaves nothing behind. An existing run's tokenizer and config are
    never replaced. Token shards are written under <work_dir>/tokens/ directly (not staged), so a
    tokenizing process that is killed resumes where it was. Returns (saved config or None, the
    task's prepared data).

    chief=False (a multi-worker run's other workers): `directory` is the work directory's path,
    read only; this waits for the chief's config.json, tokenizer and token shards and loads them.
    """
    if not chief:
        return _wait_for_chief(directory, config, task, corpora, say, verbose)
    saved = directory.saved_config(config)
    if saved:
        tokenizer = load_tokenizer(directory.file(TOKENIZER_DIR))
        _check_vocabulary(tokenizer, saved.model, directory.display, "")
        changed = [
            f"--{name}={getattr(config.train, name)} (was {getattr(saved.train, name) or 'empty'})"
            for name in ("train_data", "valid_data", "valid_fraction")
            if getattr(config.train, name) != getattr(saved.train, name)
        ]
        if changed:
            print(
                f"keraslm: note: resuming {directory.display} on other data: {'; '.join(changed)}. Validation "
                "figures are not comparable with the run's earlier ones, and a held-out split of a new file may "
                "hold examples the model has trained on",
                file=sys.stderr,
                flush=True,
            )
        if config.labels != saved.labels:
            raise InvalidInputError(
                f"--train_data={config.train.train_data} has the labels {', '.join(config.labels)} but the run in "
                f"{directory.display} was trained on {', '.join(saved.labels)}; resume with the run's own training "
                "file, or use a new --work_dir"
            )
        staging = None
        if pretrained:
            # Killed before its first checkpoint: the backbone still comes from --init_from, which
            # must be the run whose tokenizer was copied here (token ids index its embedding).
            pretrained_lib.check_same_tokenizer(pretrained, directory.file(TOKENIZER_DIR), directory.display, saved)
    else:
        staging = directory.staging_dir()
        if pretrained:
            pretrained_lib.copy_tokenizer(pretrained, os.path.join(staging, TOKENIZER_DIR))
            tokenizer = load_tokenizer(os.path.join(staging, TOKENIZER_DIR))
            _check_vocabulary(tokenizer, pretrained.config.model, f"--init_from={pretrained.work_dir}", "its ")
        else:
            tokenizer = train_tokenizer(config.tokenizer, task.tokenizer_text(corpora), os.path.join(staging, TOKENIZER_DIR))
    config.model.vocabulary_size = tokenizer.vocabulary_size + config.model.extra_ids
    storage = Storage(
        tokens_dir=directory.file(TOKENS_DIR),
        tokenizer_dir=os.path.join(staging or directory.path, TOKENIZER_DIR),
        verbose=verbose,
    )
    prepared = task.prepare(config, tokenizer, corpora, say, storage)
    if staging:
        save_run_config(config, os.path.join(staging, CONFIG_FILE))
        directory.commit(staging)
    return saved, prepared


def _wait_for_chief(path, config, task, corpora, say, verbose):
    """A worker that is not the chief: the chief's run, once its config.json and tokenizer exist
    (a new run's appear after its tokens), and its token shards, read only. Ends with an error
    when the chief stops answering: it failed (bad input, a crash) or the work directory is not
    the one the chief writes."""
    config_path, tokenizer_dir = os.path.join(path, CONFIG_FILE), os.path.join(path, TOKENIZER_DIR)
    check = _ChiefWatch(path)
    while not (os.path.isfile(config_path) and os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json"))):
        check()
    saved = load_run_config(config_path)
    tokenizer = load_tokenizer(tokenizer_dir)
    config.model.vocabulary_size = tokenizer.vocabulary_size + config.model.extra_ids
    storage = Storage(os.path.join(path, TOKENS_DIR), tokenizer_dir, write=False, verbose=verbose, wait=check)
    return saved, task.prepare(config, tokenizer, corpora, say, storage)


class _ChiefWatch:
    """Called once per poll by a worker waiting for the chief's files: sleeps a second, says every
    30 s that it is still waiting, and raises once the chief no longer accepts connections."""

    def __init__(self, path):
        self.path = path
        self.waited = 0

    def __call__(self):
        time.sleep(1)
        self.waited += 1
        if self.waited % 5 == 0 and not distribution.chief_reachable():
            raise InvalidInputError(
                f"the chief ({distribution.chief_address()} in TF_CONFIG) stopped answering while this worker waited "
                f"for it to prepare the run in --work_dir={self.path}: see the chief's error. --work_dir must be one "
                "directory every worker shares; rerun every worker's command to resume"
            )
        if self.waited % 30 == 0:
            print(f"keraslm: waiting for the chief to prepare the run in {self.path} ({self.waited} s)", file=sys.stderr, flush=True)


# The progress bar's label for Keras' running mean of the training loss within a segment.
PROGRESS_LOSS_LABEL = "segment mean loss"


class _StepCallback(keras.callbacks.Callback):
    """Advances the run's one progress bar and stops at the first non-finite loss.

    Keras' `loss` log is the running mean since the start of the fit call (one evaluation
    segment); the bar shows it as it is (a stateful metric), so at the end of a segment it equals
    the `train loss` line printed after it.
    """

    def __init__(self, progbar, first_step):
        super().__init__()
        self.progbar = progbar
        self.first_step = first_step
        self.diverged_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"])
        step = self.first_step + batch + 1
        if not math.isfinite(loss):
            self.diverged_at = (step, loss)
            self.model.stop_training = True
            return
        self.progbar.update(step, [(PROGRESS_LOSS_LABEL, loss)])


def _diverged(what, step, value, last_good_step, train):
    kept = f"the last good checkpoint (step {last_good_step}) is kept" if last_good_step else "no checkpoint was written"
    return TrainingDivergedError(
        f"training diverged: the {what} became {value} at step {step}; stopped without saving, so {kept}. "
        f"Lower --learning_rate (now {train.learning_rate}) or raise --warmup_steps, then rerun to resume"
    )


def _save_failure(error):
    """'no space left on device' / 'permission denied' for save errors a user can fix, else None."""
    if is_disk_full(error):
        return "no space left on device"
    if isinstance(error, PermissionError) or isinstance(error, tf.errors.PermissionDeniedError) or (
        "Permission denied" in str(error)
    ):
        return "permission denied"
    return None


def _restore(checkpoint, directory, saved, verbose, chief=True):
    """Restores the newest readable checkpoint; returns its step (0 for a new run).

    chief=False (a multi-worker run's other workers): reads the chief's checkpoints and leaves them as they are.
    """
    checkpoint_dir = directory.file(CHECKPOINT_DIR)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if verbose else (lambda line: None)
    restored = checkpoints.restore_newest_intact(checkpoint, checkpoint_dir, directory.display, say=say)
    if restored is None:
        recorded = run_log.recorded_steps(directory.path)
        if saved and recorded:
            raise InvalidInputError(
                f"{directory.display}: {run_log.METRICS_FILE} records evaluations up to step {max(recorded)} but "
                f"{CHECKPOINT_DIR}/ holds no checkpoint; refusing to start this run over on top of its history. "
                "Put the checkpoint files back, or delete the work directory to start over"
            )
        return 0
    if chief and checkpoints.read_index(checkpoint_dir)[0] != restored:
        # So that CheckpointManager (and export) see the checkpoint actually resumed from.
        checkpoints.rewrite_index(checkpoint_dir, restored)
    return checkpoints.step_of(restored)


def _fine_tuning_run_to_resume(config, work_dir):
    """The saved config of a fine-tuning run in work_dir that has checkpoints of its own, if this
    invocation continues it (the same --init_from, or none given); else None."""
    own = os.path.join(work_dir, CONFIG_FILE)
    if not (os.path.isfile(own) and checkpoints.checkpoint_files(os.path.join(work_dir, CHECKPOINT_DIR))):
        return None
    try:
        saved = load_run_config(own)
    except InvalidInputError:
        return None  # The work directory's own checks name what is wrong with it.
    if saved.task != config.task or not saved.train.init_from:
        return None
    if config.train.init_from not in ("", saved.train.init_from):
        return None
    return saved


def _pretrained_run(config, work_dir, explicit, verbose):
    """--init_from: the pretraining run (checked and read), its settings adopted into `config`.

    A fine-tuning run that already has checkpoints of its own resumes from them with its own
    settings: the pretraining run is not read again (it may have moved, or trained on). Returns
    None when there is nothing to start from.
    """
    saved = _fine_tuning_run_to_resume(config, work_dir)
    if saved:
        config.train.init_from = saved.train.init_from
        pretrained_lib.adopt_settings(config, saved, explicit)
        config.model.causal = saved.model.causal  # Its own direction, not that of a classify run.
        return None
    if not config.train.init_from:
        return None
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if verbose else (lambda line: None)
    pretrained = pretrained_lib.load_pretrained_run(config.train.init_from, say=say)
    pretrained_lib.adopt_settings(config, pretrained.config, explicit)
    return pretrained


def train(config: RunConfig, work_dir, verbose=True, explicit=None):
    """Trains (or resumes) the run described by `config` in `work_dir`; returns a TrainResult.

    explicit: with --init_from, the names of the settings the user gave (keraslm.pretrained).

    Under --strategy=multi_worker every worker calls this with the same config and work_dir (a
    directory they all share); only the chief locks and writes it (keraslm.distribution).
    """
    started = time.perf_counter()
    config.validate()
    # Before any other TensorFlow op: logical devices and the cluster are fixed at start-up.
    strategy = distribution.create_strategy(config.train)
    distribution.check_batch_size(config.train, strategy)
    chief = distribution.is_chief(strategy)
    verbose = verbose and chief
    task = get_task(config.task)
    pretrained = _pretrained_run(config, work_dir, explicit, verbose)
    task.resolve(config)
    # Read and checked before the work directory is touched: bad input leaves nothing behind.
    corpora = task.read(config)
    config.labels = task.labels(corpora)
    if config.train.teacher:
        # --task=classify: the teacher scores the training texts once, before the work directory
        # is touched (a bad teacher leaves nothing behind); the task's batches carry the scores.
        corpora.teacher_scores = distillation.training_scores(config, corpora.train, load_trained_model, verbose)
    try:
        if not chief:
            return _train_in(_ChiefsWorkDir(work_dir), config, task, corpora, started, verbose, pretrained, strategy)
        with WorkDir(work_dir) as directory:
            return _train_in(directory, config, task, corpora, started, verbose, pretrained, strategy)
    except tf.errors.OpError as error:
        saved = checkpoints.checkpoint_files(os.path.join(work_dir, CHECKPOINT_DIR))
        lost = distribution.worker_lost(error, strategy, checkpoints.step_of(saved[0]) if saved else 0)
        if lost is None:
            raise
        raise lost from None


class _ChiefsWorkDir:
    """A multi-worker run's work directory as its other workers see it: read only and not locked
    (the chief holds the lock and writes everything)."""

    def __init__(self, path):
        self.display = f"--work_dir={path}"
        self.path = os.path.realpath(path)

    def file(self, name):
        return os.path.join(self.path, name)


def _check_freeze_on_resume(directory, saved, freeze_steps, step):
    """A resumed run whose backbone was already unfrozen cannot freeze it again: the head-only
    phase is meant to come before any backbone update, not in the middle of fine-tuning."""
    if saved and step > saved.train.freeze_steps and freeze_steps > step:
        raise InvalidInputError(
            f"--freeze_steps={freeze_steps}: the run in {directory.display} is at step {step} and has trained its "
            f"backbone since step {saved.train.freeze_steps} (its --freeze_steps); a backbone cannot be frozen again, "
            f"so give --freeze_steps={saved.train.freeze_steps} (or at most {step}), or use a new --work_dir"
        )


def _note_effective_batch_change(directory, saved, train, step):
    """Step k reads the k-th batch of batch_size × grad_accum_steps examples, so a resumed run
    may split that batch otherwise (less memory, the same steps), but one that changes the
    product reads from step `step` on other examples than the run would have: allowed, as any
    training setting may change, and said."""
    if not (saved and step):
        return
    before, now = (gradient_accumulation.optimizer_step_batch_size(run) for run in (saved.train, train))
    if before != now:
        print(
            f"keraslm: note: resuming {directory.display} at step {step} with {now} examples per optimizer step "
            f"(--batch_size={train.batch_size} × --grad_accum_steps={train.grad_accum_steps}), was {before} "
            f"({saved.train.batch_size} × {saved.train.grad_accum_steps}): from here on it reads other batches than "
            "the run would have",
            file=sys.stderr,
            flush=True,
        )


def _set_backbone_trainable(model, backbone, trainable):
    """--freeze_steps: the backbone joins (or leaves) training; the step function is rebuilt, as
    it reads the trainable variables when it is traced."""
    if backbone.trainable != trainable:
        backbone.trainable = trainable
        model.make_train_function(force=True)


def _train_in(directory, config, task, corpora, started, verbose, pretrained=None, strategy=None):
    say = (lambda line: print(line, flush=True)) if verbose else (lambda line: None)
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribution.is_chief(strategy)
    saved, prepared = _prepare_work_dir(
        directory if chief else directory.path, config, task, corpora, say, pretrained, chief=chief, verbose=verbose
    )
    train = config.train
    keras.utils.set_random_seed(train.seed)
    # Variables (model, optimizer, step counter) are created under the strategy: mirrored on
    # every replica, and restored into all of them from the chief's checkpoint.
    with strategy.scope():
        model = build_compiled_model(config, task)
        backbone, head = split_model(model)

        # Steps taken, counted apart from optimizer.iterations: under mixed_float16 the loss-scale
        # optimizer does not count the steps it skips on overflow, and the data index must not lag.
        steps_taken = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_taken")
        checkpoint = tf.train.Checkpoint(
            backbone=backbone,
            head=head,
            optimizer=model.optimizer,
            steps_taken=steps_taken,
            # Dropout's random streams: without them a resumed run would draw other masks.
            random_state=[variable for variable in model.variables if variable.path.endswith("seed_generator_state")],
        )
        # --prune_sparsity: its masks, mirrored like the weights they constrain (keraslm.pruning).
        pruner = pruning.Pruner(model, train) if train.prune_sparsity else None
    restored_step = _restore(checkpoint, directory, saved, verbose, chief)
    distribution.check_same_checkpoint(strategy, restored_step, directory.display)
    if pretrained and not restored_step:
        pretrained_lib.restore_backbone(backbone, pretrained)
        say(
            f"keraslm: the backbone starts from {pretrained.work_dir} (--task={pretrained.config.task}, step "
            f"{pretrained.step}); new head: {', '.join(sorted(head))}"
        )
    if restored_step and int(steps_taken.numpy()) == 0:
        # A checkpoint from before steps_taken existed: the optimizer counted the steps.
        steps_taken.assign(int(model.optimizer.iterations))
    _check_freeze_on_resume(directory, saved, config.train.freeze_steps, int(steps_taken.numpy()))
    if pruner:
        # After the restore: a resumed run's masks are rebuilt from its restored (pruned) weights.
        pruner.start(int(steps_taken.numpy()))
    if chief:
        _note_effective_batch_change(directory, saved, train, int(steps_taken.numpy()))
    # Other workers take part in each (collective) save into a temporary directory of their own.
    manager = (
        tf.train.CheckpointManager(checkpoint, directory.file(CHECKPOINT_DIR), max_to_keep=3)
        if chief
        else distribution.WorkerCheckpoints(checkpoint)
    )
    step = int(steps_taken.numpy())
    log = RunLog(directory.path, step, loss_unit=getattr(task, "loss_unit", task.throughput_unit.rstrip("s")), write=chief)
    eval_dataset = task.eval_dataset(prepared, config)
    if verbose:
        resumed = f", resuming from step {step}" if step else ""
        classes = f", {len(config.labels)} classes" if config.labels else ""
        print(
            f"keraslm: {task.describe(prepared)}{classes}, vocabulary {config.model.vocabulary_size:,}, "
            f"{model.count_params():,} parameters{distribution.describe(strategy)}{resumed}",
            flush=True,
        )
    # A live bar on a terminal; in a log file the per-evaluation lines say the same.
    progbar = keras.utils.Progbar(
        train.train_steps,
        verbose=1 if verbose and sys.stdout.isatty() and step < train.train_steps else 0,
        stateful_metrics=[PROGRESS_LOSS_LABEL],
    )
    progbar.update(step)

    train_loss = val_loss = float("nan")
    val_metrics = {}
    train_seconds, first_step, last_saved_step = 0.0, step, step
    # Training batches hold an optimizer step's examples, batch_size × grad_accum_steps; the
    # train step splits them into micro-batches (keraslm.gradient_accumulation).
    step_config = gradient_accumulation.optimizer_step_config(config)
    while step < train.train_steps:
        # A segment ends at the next multiple of eval_interval (or the last step).
        segment_end = min(train.train_steps, (step // train.eval_interval + 1) * train.eval_interval)
        if step < train.freeze_steps:
            # The head trains alone up to --freeze_steps (a segment ends there), then everything.
            segment_end = min(segment_end, train.freeze_steps)
        _set_backbone_trainable(model, backbone, step >= train.freeze_steps)
        segment_steps = segment_end - step
        dataset = task.train_dataset(prepared, step_config, step, segment_steps)
        gradient_accumulation.check_batches(dataset, train)
        distribution.prepare_for_fit(model, strategy, dataset)
        watch = _StepCallback(progbar, step)
        if pruner:
            pruner.first_step = step
        segment_started = time.perf_counter()
        history = model.fit(
            dataset,
            epochs=1,
            steps_per_epoch=segment_steps,
            verbose=0,
            shuffle=False,
            callbacks=[watch, pruner] if pruner else [watch],
        )
        if watch.diverged_at:
            raise _diverged("training loss", *watch.diverged_at, last_saved_step, train)
        segment_seconds = time.perf_counter() - segment_started
        train_seconds += segment_seconds
        step = segment_end
        steps_taken.assign(step)
        train_loss = float(history.history["loss"][-1])
        val_metrics = {key: float(value) for key, value in model.evaluate(eval_dataset, verbose=0, return_dict=True).items()}
        val_loss = val_metrics["loss"]
        if not math.isfinite(val_loss):
            raise _diverged("validation loss", step, val_loss, last_saved_step, train)
        record = {
            "step": step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            **{f"val_{key}": value for key, value in val_metrics.items() if key != "loss"},
            "learning_rate": float(model.optimizer.learning_rate),
            **({"sparsity": pruner.sparsity()} if pruner else {}),
            "ms_per_step": 1000.0 * segment_seconds / segment_steps,
            f"{task.throughput_unit}_per_second": segment_steps * task.units_per_step(step_config) / segment_seconds,
            "elapsed_seconds": time.perf_counter() - started,
        }
        # Metrics first, checkpoint second: a crash between the two resumes from the previous
        # checkpoint, and RunLog forgets the record that is about to be measured again.
        try:
            log.add(record)
            manager.save(checkpoint_number=step)
            if chief and saved and last_saved_step == first_step and saved.train != train:
                # Once this invocation has a checkpoint, config.json records its training
                # settings; the model and tokenizer settings are the run's own (checked above).
                save_run_config(config, directory.file(CONFIG_FILE))
        except (OSError, tf.errors.OpError) as error:
            reason = _save_failure(error)
            if reason is None:
                raise
            kept = (
                f"the checkpoint of step {last_saved_step} (a rerun resumes from it and measures step {step} again)"
                if last_saved_step
                else "the tokenizer and config.json"
            )
            raise InvalidInputError(
                f"{reason} while saving step {step} in {directory.display}; kept: {kept}. "
                "Fix that, then rerun the same command to resume"
            ) from None
        last_saved_step = step
        if verbose:
            progbar.update(step, [(PROGRESS_LOSS_LABEL, train_loss)], finalize=step >= train.train_steps)
            others = "".join(f", val {key} {value:.4f}" for key, value in val_metrics.items() if key != "loss")
            if pruner:
                others += f", sparsity {record['sparsity']:.3f}"
            print(
                f"{chr(10) if progbar.verbose else ''}step {step}: train loss {train_loss:.4f} "
                f"(mean of steps {step - segment_steps + 1}-{step}), val loss {val_loss:.4f}{others}, "
                f"{record['ms_per_step']:.1f} ms/step",
                flush=True,
            )
    if step == first_step and log.records:
        # Nothing left to do: report the finished run.
        last = log.records[-1]
        train_loss, val_loss = last["train_loss"], last["val_loss"]
        val_metrics = {"loss": val_loss, **{key[4:]: value for key, value in last.items() if key.startswith("val_") and key != "val_loss"}}
    return TrainResult(
        work_dir=directory.path,
        step=step,
        train_loss=train_loss,
        val_loss=val_loss,
        val_metrics=val_metrics,
        wall_seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        steps_run=step - first_step,
        chief=chief,
        strategy=strategy,
    )


class TrainedModel(typing.NamedTuple):
    config: RunConfig
    model: keras.Model
    tokenizer: object
    # The checkpoint prefix restored (<work_dir>/checkpoints/ckpt-<step>).
    checkpoint: str


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
    model = get_task(config.task).build_model(config, use_cudnn=use_cudnn)
    backbone, head = split_model(model)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    restored = checkpoints.restore_newest_intact(
        tf.train.Checkpoint(backbone=backbone, head=head),
        os.path.join(work_dir, CHECKPOINT_DIR),
        f"--work_dir={work_dir}",
        partial=True,
        say=say,
    )
    if restored is None:
        raise InvalidInputError(f"--work_dir={work_dir} has no checkpoint yet; train it first with keraslm-train")
    tokenizer_dir = os.path.join(work_dir, TOKENIZER_DIR)
    if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        raise InvalidInputError(f"--work_dir={work_dir}: {TOKENIZER_DIR}/ is missing or incomplete; put the run's tokenizer back")
    tokenizer = load_tokenizer(tokenizer_dir)
    return TrainedModel(config, model, tokenizer, restored)
