"""Tasks: what differs between language modelling, classification and the tasks to come.

A task owns its dataset from files, its head, loss and metrics, what it evaluates, and its export
module (signatures); backbones (keraslm.backbones) and the training loop (keraslm.training) are
shared. Every task implements:

  name, throughput_unit          "lm" / "mlm" / "classify" / "seq2seq"; what a step's work is counted in
  loss_unit (optional)           what the loss is averaged over, when not throughput_unit
  exportable                     whether export_module makes a SavedModel (mlm: pretraining only)
  resolve(config)                sets the settings the task decides (mlm: the [MASK] id) before reading
  read(config)                   -> corpora: the files, checked (errors name file and line); lm and
                                    mlm stream their text and keep only its description
  tokenizer_text(corpora)        -> the text a new run's tokenizer learns from
  labels(corpora)                -> the class names ([] for tasks without classes)
  prepare(config, tokenizer, corpora, say, storage) -> token ids for training and validation
                                    (lm, mlm: token shards under storage.tokens_dir, keraslm.token_store)
  describe(prepared)             -> "N training and M validation examples" for the log
  build_model(config, use_cudnn) -> a Keras model holding a layer named "backbone" (the part a
                                    checkpoint keeps apart) and the task's head layers
  compile_args(config)           -> model.compile's loss and metrics
  train_dataset(prepared, config, start_step, num_steps), eval_dataset(prepared, config)
  units_per_step(config)         -> throughput_unit per optimizer step
  export_module(model, tokenizer, config, export_config, config_path) -> the SavedModel's root
"""

from keraslm.errors import InvalidInputError
from keraslm.tasks.classify import ClassifyTask
from keraslm.tasks.lm import LanguageModelTask
from keraslm.tasks.mlm import MaskedLanguageModelTask
from keraslm.tasks.seq2seq import Seq2SeqTask

_TASKS = {task.name: task for task in (LanguageModelTask, MaskedLanguageModelTask, ClassifyTask, Seq2SeqTask)}


def get_task(name):
    if name not in _TASKS:
        raise InvalidInputError(f"--task={name!r} is not known; use one of {', '.join(_TASKS)}")
    return _TASKS[name]()


def build_model(config, use_cudnn="auto"):
    """The Keras model of a RunConfig's task (backbone + head), untrained."""
    return get_task(config.task).build_model(config, use_cudnn=use_cudnn)
