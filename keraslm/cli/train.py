"""keraslm-train: train a language model or a text classifier, optionally export it.

  keraslm-train --flagfile=configs/tinyshakespeare_char.flags
  keraslm-train --train_data=my.txt --model=lstm --work_dir=runs/my --export_dir=saved_models/my
  keraslm-train --task=classify --train_data=reviews.csv --work_dir=runs/reviews --export_dir=saved_models/reviews
  keraslm-train --task=mlm --train_data=unlabelled.jsonl.gz --work_dir=runs/pretrained
  keraslm-train --task=classify --init_from=runs/pretrained --train_data=reviews.csv --work_dir=runs/fine_tuned
"""

from absl import flags

from keraslm import config as config_lib
from keraslm.cli import settings
from keraslm.cli.common import run_main

FLAGS = flags.FLAGS

def define_flags():
    # Every training setting, from keraslm.config's declarations.
    settings.define_flags(config_lib.RunConfig)
    flags.DEFINE_string(
        "work_dir",
        "",
        "Directory for config, tokenizer, checkpoints and logs (required). Rerun to resume. --strategy=multi_worker: "
        "the same directory on every worker, on storage they all share; only the chief writes it.",
    )
    flags.DEFINE_string(
        "export_dir",
        "",
        "If set, export a SavedModel to <export_dir>/<next version>/ after training (multi_worker: the chief does).",
    )


def config_from_flags():
    return settings.from_flags(config_lib.RunConfig)


def main(argv):
    del argv
    from keraslm.errors import InvalidInputError

    if not FLAGS.work_dir:
        raise InvalidInputError("--work_dir is required: the directory for checkpoints and logs (rerun to resume)")
    config = config_from_flags()
    config.validate()
    if FLAGS.export_dir and config.task == "mlm":
        raise InvalidInputError(
            "--export_dir: a --task=mlm run pretrains an encoder and has no serving signature to export; drop "
            "--export_dir, then fine-tune it with keraslm-train --task=classify --init_from=<this --work_dir>"
        )
    # Imported after flag checks: TensorFlow takes seconds to load.
    from keraslm import distribution, training

    # With --init_from, a setting given here that the pretraining run set otherwise is an error;
    # one left at its default is taken from that run.
    explicit = {name for name in FLAGS if FLAGS[name].present}
    result = training.train(config, FLAGS.work_dir, explicit=explicit)
    if result.chief:  # A multi-worker run's other workers leave reporting and export to the chief.
        _report_and_export(result)
    # --strategy=multi_worker: the workers leave the cluster together, once the chief has exported.
    distribution.wait_for_each_other(result.strategy)


def _report_and_export(result):
    from keraslm import export

    if result.steps_run:
        timing = f"{result.wall_seconds:.1f} s wall, {result.ms_per_step:.1f} ms/step over {result.steps_run} steps"
    else:
        timing = f"nothing to train: the run is at step {result.step} and --train_steps={FLAGS.train_steps}"
    others = "".join(f", val {key} {value:.4f}" for key, value in result.val_metrics.items() if key != "loss")
    print(
        f"keraslm: step {result.step}: train loss {result.train_loss:.4f}, val loss {result.val_loss:.4f}{others}; {timing}",
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
