"""keraslm-export: write a trained work directory as a SavedModel in TF Serving layout.

  keraslm-export --work_dir=runs/shakespeare --export_dir=saved_models/shakespeare
"""

import os

from absl import flags

from keraslm.cli import settings
from keraslm.cli.common import run_main
from keraslm.config import ExportConfig

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("work_dir", "", "Training work directory written by keraslm-train (required).")
    flags.DEFINE_string("export_dir", "", "Base directory; the model goes to <export_dir>/<next version>/ (required).")
    settings.define_flags(ExportConfig)


def main(argv):
    del argv
    from keraslm.errors import InvalidInputError
    from keraslm.export import export_from_work_dir

    for name in ("work_dir", "export_dir"):
        if not FLAGS[name].value:
            raise InvalidInputError(f"--{name} is required")
    given = [f"--{name}" for name in settings.flag_names(ExportConfig) if FLAGS[name].present]
    if given:
        from keraslm.config import load_run_config

        config_path = os.path.join(FLAGS.work_dir, "config.json")
        task = load_run_config(config_path).task if os.path.isfile(config_path) else "lm"
        if task != "lm":
            what = "a classifier" if task == "classify" else f"a --task={task} run"
            raise InvalidInputError(
                f"{', '.join(given)}: {'these flags set' if len(given) > 1 else 'this flag sets'} a language model's "
                f"decoding; --work_dir={FLAGS.work_dir} holds {what}, so leave {'them' if len(given) > 1 else 'it'} out"
            )
    export_config = settings.from_flags(ExportConfig)
    export_config.validate()
    export_from_work_dir(FLAGS.work_dir, FLAGS.export_dir, export_config)


def run():
    define_flags()
    run_main(main, "keraslm-export")


if __name__ == "__main__":
    run()
