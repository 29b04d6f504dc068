"""--init_from: a classifier that starts from a pretraining run's tokenizer and backbone.

A pretraining run (--task=mlm: the Transformer encoder; --task=lm: the Transformer decoder or a
unidirectional LSTM) is a work directory like any other. Fine-tuning takes from it:
- its tokenizer and model settings (the backbone's shapes depend on them): a setting given on
  the command line that differs is a one-line error naming both values. What fine-tuning may
  change: --dropout, --truncation, and an LSTM's --sequence_length (its weights do not depend on
  it: an LM pretrained on 64-token windows classifies 256-token reviews; not given, it is the
  pretraining run's). Settings the backbone does not read (an LSTM's --num_heads) are ignored;
- the direction: a causal LM's backbone stays causal (Dai & Le 2015), an MLM encoder bidirectional;
- its tokenizer directory, copied into the new run;
- the backbone weights of its newest readable checkpoint, restored under the task's new head.
"""

import dataclasses
import filecmp
import os
import shutil

import tensorflow as tf

from keraslm import checkpoints, run_log
from keraslm.config import PRETRAINING_TASKS, RunConfig, load_run_config
from keraslm.errors import InputNotFoundError, InvalidInputError
from keraslm.work_dir import CHECKPOINT_DIR, CONFIG_FILE, TOKENIZER_DIR


@dataclasses.dataclass
class PretrainedRun:
    work_dir: str
    config: RunConfig
    # The checkpoint step restored, and {layer name: weight values} of its backbone.
    step: int = 0
    weights: dict = dataclasses.field(default_factory=dict)

    @property
    def tokenizer_dir(self):
        return os.path.join(self.work_dir, TOKENIZER_DIR)


def fine_tuning_settings(model):
    """Model settings a fine-tuning run may set apart from its pretraining run's."""
    names = {"dropout", "truncation"}
    if model == "lstm":
        names.add("sequence_length")
    return names


def unused_settings(model):
    """Model settings the backbone does not read: given or not, they cannot conflict."""
    return {"num_heads", "intermediate_dim"} if model == "lstm" else set()


def load_pretrained_run(init_from, say=print):
    """The pretraining run in --init_from, checked and with its backbone's weights read.

    Everything that can be wrong with it (not a pretraining run, no tokenizer, no readable
    checkpoint) is found here, before the fine-tuning run's work directory is touched.
    """
    advice = "give the --work_dir of a keraslm-train --task=mlm or --task=lm run"
    if os.path.isfile(init_from):
        raise InvalidInputError(f"--init_from={init_from} is a file, not a work directory; {advice}")
    if not os.path.isdir(init_from):
        raise InputNotFoundError(f"--init_from={init_from}: no such directory; {advice}")
    path = os.path.join(init_from, CONFIG_FILE)
    if not os.path.isfile(path):
        raise InvalidInputError(f"--init_from={init_from} has no {CONFIG_FILE}, so it is not a keraslm work directory; {advice}")
    config = load_run_config(path)
    if config.task not in PRETRAINING_TASKS:
        raise InvalidInputError(
            f"--init_from={init_from} is a --task={config.task} run; a classifier starts from a pretraining run: {advice}"
        )
    if not os.path.isfile(os.path.join(init_from, TOKENIZER_DIR, "tokenizer.json")):
        raise InvalidInputError(f"--init_from={init_from}: its {TOKENIZER_DIR}/ is missing or incomplete; put it back")
    run = PretrainedRun(init_from, config)
    run.step, run.weights = _read_backbone(run, say)
    return run


def _read_backbone(pretrained, say):
    """(step, {layer name: weight values}) of the pretraining run's newest readable checkpoint.

    The run's own model is rebuilt and restored; a checkpoint cannot be restored into the
    fine-tuning backbone directly, because the object graph numbers a functional model's layers
    and fine-tuning may add dropout layers (--dropout) that pretraining did not have. Weights
    move by layer name instead ("embedding", "lstm_0", "encoder_1", ...).
    """
    from keraslm.tasks import build_model  # The pretraining run's task builds its model.

    where = f"--init_from={pretrained.work_dir}"
    checkpoint_dir = os.path.join(pretrained.work_dir, CHECKPOINT_DIR)
    if not checkpoints.checkpoint_files(checkpoint_dir):
        recorded = run_log.recorded_steps(pretrained.work_dir)
        if recorded:
            raise InvalidInputError(
                f"{where}: its {run_log.METRICS_FILE} records evaluations up to step {max(recorded)} but its "
                f"{CHECKPOINT_DIR}/ holds no checkpoint; the pretrained weights are gone: restore {CHECKPOINT_DIR}/ "
                "from a backup, or pretrain again"
            )
        raise InvalidInputError(
            f"{where} has no checkpoint yet: it writes its first at its first evaluation (--eval_interval); "
            "wait for it, or train it first"
        )
    source = build_model(pretrained.config).get_layer("backbone")
    prefix = checkpoints.restore_newest_intact(
        tf.train.Checkpoint(backbone=source),
        checkpoint_dir,
        where,
        # The pretraining head and optimizer are in the file and stay there.
        partial=True,
        say=say,
        advice="the pretraining run is damaged: restore its checkpoints/ from a backup, or pretrain again",
    )
    return checkpoints.step_of(prefix), {
        name: [weight.numpy() for weight in _weights(layer)] for name, layer in _layers_with_weights(source).items()
    }


def adopt_settings(config, pretrained_config, explicit=None):
    """Gives `config` (a classifier's) the pretraining run's tokenizer and model settings.

    explicit: the names of the settings the user gave (the command line's flags); None counts
    every setting that differs from its default as given. A given setting that differs from the
    pretraining run's is refused, except fine_tuning_settings.
    """
    init_from = config.train.init_from
    keep = fine_tuning_settings(pretrained_config.model.model)
    unused = unused_settings(pretrained_config.model.model)

    def given(field, value):
        return field.name in explicit if explicit is not None else value != field.default

    for section in ("tokenizer", "model"):
        mine, theirs = getattr(config, section), getattr(pretrained_config, section)
        for field in dataclasses.fields(mine):
            if not field.metadata.get("flag") or field.name in keep or field.name in unused:
                continue
            value, pretrained_value = getattr(mine, field.name), getattr(theirs, field.name)
            if given(field, value) and value != pretrained_value:
                raise InvalidInputError(
                    f"--{field.name}={value} conflicts with --{field.name}={pretrained_value} of the pretraining run "
                    f"--init_from={init_from}; a fine-tuned backbone keeps its pretraining's model and tokenizer "
                    f"settings, so drop --{field.name} (or pretrain again with it)"
                )
    # What fine-tuning may change is the user's; an LSTM's sequence length not given stays the
    # pretraining run's, like every other model setting.
    fields = {field.name: field for field in dataclasses.fields(config.model)}
    fine_tuning = {
        name: getattr(config.model, name)
        for name in keep
        if name != "sequence_length" or given(fields[name], config.model.sequence_length)
    }
    config.tokenizer = dataclasses.replace(pretrained_config.tokenizer)
    config.model = dataclasses.replace(
        pretrained_config.model, causal=pretrained_config.task == "lm", **fine_tuning
    )


def check_same_tokenizer(pretrained, directory, where, saved):
    """Refuses a pretraining run whose tokenizer is not the one in `directory` (a fine-tuning
    run's copy): its backbone would read other tokens than the ids say."""
    mine = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    theirs = sorted(os.listdir(pretrained.tokenizer_dir))
    _, mismatch, errors = filecmp.cmpfiles(directory, pretrained.tokenizer_dir, theirs, shallow=False)
    if mine != theirs or mismatch or errors:
        raise InvalidInputError(
            f"--init_from={pretrained.work_dir}: its tokenizer is not the one {where} was started with "
            f"(from --init_from={saved.train.init_from}); give --init_from={saved.train.init_from}, or use a new --work_dir"
        )


def copy_tokenizer(pretrained, directory):
    """Copies the pretraining run's tokenizer directory to `directory` (a new run's staging)."""
    shutil.copytree(pretrained.tokenizer_dir, directory)


def _weights(layer):
    """A layer's weights, without dropout's random state (not carried over)."""
    return [weight for weight in layer.weights if "seed_generator" not in weight.path]


def _layers_with_weights(backbone):
    return {layer.name: layer for layer in backbone.layers if _weights(layer)}


def restore_backbone(backbone, pretrained):
    """Gives `backbone` the pretraining run's backbone weights (read by load_pretrained_run)."""
    where = f"--init_from={pretrained.work_dir}"
    targets = _layers_with_weights(backbone)
    if sorted(targets) != sorted(pretrained.weights):
        raise InvalidInputError(
            f"{where}: its backbone has the layers {', '.join(sorted(pretrained.weights))} but this classifier's has "
            f"{', '.join(sorted(targets))}; pretrain again with this keraslm version"
        )
    for name, layer in targets.items():
        values = pretrained.weights[name]
        shapes = [tuple(weight.shape) for weight in _weights(layer)]
        if shapes != [value.shape for value in values]:
            raise InvalidInputError(
                f"{where}: the layer {name} has weights of shapes {[value.shape for value in values]} there but "
                f"{shapes} here; pretrain again, or fine-tune with the pretraining run's settings"
            )
        for weight, value in zip(_weights(layer), values):
            weight.assign(value)
