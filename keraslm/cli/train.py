"""keraslm-train: train a language model on a text file, optionally export it.

  keraslm-train --flagfile=configs/tinyshakespeare_char.flags
  keraslm-train --train_data=my.txt --model=lstm --work_dir=runs/my --export_dir=saved_models/my
"""

from absl import flags

from keraslm import config as config_lib
from keraslm.cli.common import run_main

FLAGS = flags.FLAGS
_DEFAULT = config_lib.RunConfig()


def define_flags():
    tokenizer, model, train = _DEFAULT.tokenizer, _DEFAULT.model, _DEFAULT.train
    flags.DEFINE_enum("task", _DEFAULT.task, config_lib.TASKS, "What to train: lm = a language model on raw text.")
    flags.DEFINE_enum("model", model.model, config_lib.MODELS, "Architecture: transformer (keras-nlp decoder) or lstm.")
    flags.DEFINE_string("train_data", "", "UTF-8 text file to train on (required).")
    flags.DEFINE_string("valid_data", "", "UTF-8 text file to validate on; empty holds out the last 10% of --train_data.")
    flags.DEFINE_enum("tokenizer", tokenizer.tokenizer, config_lib.TOKENIZERS, "How text becomes ids; trained on --train_data.")
    flags.DEFINE_integer(
        "vocabulary_size", tokenizer.vocabulary_size,
        "Vocabulary cap incl. [PAD] and [UNK]. 0: every character (char), 258 (byte), "
        f"{config_lib.DEFAULT_SUBWORD_VOCABULARY_SIZE} (wordpiece, sentencepiece).",
    )
    flags.DEFINE_integer("sequence_length", model.sequence_length, "Context window in tokens (training window length).")
    flags.DEFINE_integer("hidden_dim", model.hidden_dim, "Width of embeddings and hidden states.")
    flags.DEFINE_integer("intermediate_dim", model.intermediate_dim, "Transformer feed-forward width; 0 means 4 * hidden_dim.")
    flags.DEFINE_integer("num_layers", model.num_layers, "Number of Transformer decoder blocks or LSTM layers.")
    flags.DEFINE_integer("num_heads", model.num_heads, "Attention heads per Transformer block; must divide --hidden_dim.")
    flags.DEFINE_float("dropout", model.dropout, "Dropout rate in [0, 1); 0 for small data and short runs.")
    flags.DEFINE_integer("batch_size", train.batch_size, "Windows per optimizer step.")
    flags.DEFINE_integer("train_steps", train.train_steps, "Optimizer steps in the whole run (a resumed run ends here too).")
    flags.DEFINE_float("learning_rate", train.learning_rate, "Peak AdamW learning rate, reached after --warmup_steps.")
    flags.DEFINE_float("min_learning_rate", train.min_learning_rate, "Learning rate at the end of the cosine decay.")
    flags.DEFINE_integer("warmup_steps", train.warmup_steps, "Steps of linear learning-rate warmup from 0; -1: 5% of --train_steps, at most 100.")
    flags.DEFINE_float("weight_decay", train.weight_decay, "AdamW decoupled weight decay (not applied to biases and norms).")
    flags.DEFINE_float("beta_1", train.beta_1, "AdamW first-moment decay.")
    flags.DEFINE_float("beta_2", train.beta_2, "AdamW second-moment decay.")
    flags.DEFINE_float("gradient_clip_norm", train.gradient_clip_norm, "Clip the global gradient norm to this; 0 turns clipping off.")
    flags.DEFINE_integer("eval_interval", train.eval_interval, "Validate, log and checkpoint every this many steps.")
    flags.DEFINE_integer("eval_steps", train.eval_steps, "Validation batches per evaluation; 0 means the whole validation text.")
    flags.DEFINE_integer("seed", train.seed, "Random seed: same seed and flags give the same run.")
    flags.DEFINE_bool("jit_compile", train.jit_compile, "Compile train steps with XLA. Unset: the fastest measured choice for --model and the device.")
    flags.DEFINE_integer("steps_per_execution", train.steps_per_execution, "Optimizer steps per call into the compiled graph.")
    flags.DEFINE_enum("mixed_precision", train.mixed_precision, config_lib.MIXED_PRECISION, "Keras dtype policy; mixed_float16 for CUDA GPUs.")
    flags.DEFINE_string("work_dir", "", "Directory for config, tokenizer, checkpoints and logs (required). Rerun to resume.")
    flags.DEFINE_string("export_dir", "", "If set, export a SavedModel to <export_dir>/<next version>/ after training.")


def config_from_flags():
    return config_lib.RunConfig(
        task=FLAGS.task,
        tokenizer=config_lib.TokenizerConfig(tokenizer=FLAGS.tokenizer, vocabulary_size=FLAGS.vocabulary_size),
        model=config_lib.ModelConfig(
            model=FLAGS.model,
            sequence_length=FLAGS.sequence_length,
            hidden_dim=FLAGS.hidden_dim,
            intermediate_dim=FLAGS.intermediate_dim,
            num_layers=FLAGS.num_layers,
            num_heads=FLAGS.num_heads,
            dropout=FLAGS.dropout,
        ),
        train=config_lib.TrainConfig(
            train_data=FLAGS.train_data,
            valid_data=FLAGS.valid_data,
            batch_size=FLAGS.batch_size,
            train_steps=FLAGS.train_steps,
            learning_rate=FLAGS.learning_rate,
            min_learning_rate=FLAGS.min_learning_rate,
            warmup_steps=FLAGS.warmup_steps,
            weight_decay=FLAGS.weight_decay,
            beta_1=FLAGS.beta_1,
            beta_2=FLAGS.beta_2,
            gradient_clip_norm=FLAGS.gradient_clip_norm,
            eval_interval=FLAGS.eval_interval,
            eval_steps=FLAGS.eval_steps,
            seed=FLAGS.seed,
            jit_compile=FLAGS.jit_compile,
            steps_per_execution=FLAGS.steps_per_execution,
            mixed_precision=FLAGS.mixed_precision,
        ),
    )


def main(argv):
    del argv
    from keraslm.errors import InvalidInputError

    if not FLAGS.work_dir:
        raise InvalidInputError("--work_dir is required: the directory for checkpoints and logs (rerun to resume)")
    config = config_from_flags()
    config.validate()
    # Imported after flag checks: TensorFlow takes seconds to load.
    from keraslm import export, training

    result = training.train(config, FLAGS.work_dir)
    if result.steps_run:
        timing = f"{result.wall_seconds:.1f} s wall, {result.ms_per_step:.1f} ms/step over {result.steps_run} steps"
    else:
        timing = f"nothing to train: the run is at step {result.step} and --train_steps={FLAGS.train_steps}"
    print(
        f"keraslm: step {result.step}: train loss {result.train_loss:.4f}, val loss {result.val_loss:.4f}; {timing}",
        flush=True,
    )
    if FLAGS.export_dir:
        # A re-run that trained nothing would otherwise add an identical version every time.
        export.export_from_work_dir(FLAGS.work_dir, FLAGS.export_dir, only_if_changed=True)


def run():
    define_flags()
    run_main(main, "keraslm-train")


if __name__ == "__main__":
    run()
