"""keraslm-export: write a trained work directory as a SavedModel in TF Serving layout, or as a
LiteRT (TFLite) model for edge devices.

  keraslm-export --work_dir=runs/shakespeare --export_dir=saved_models/shakespeare
  keraslm-export --work_dir=runs/sst2 --export_dir=saved_models/sst2_tflite --format=tflite --quantize=dynamic_range
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
    given = [name for name in settings.flag_names(ExportConfig) if FLAGS[name].present]
    if given:
        from keraslm.config import load_run_config

        config_path = os.path.join(FLAGS.work_dir, "config.json")
        task = load_run_config(config_path).task if os.path.isfile(config_path) else "lm"
        # Which export settings each kind of model reads; the others would be silently ignored.
        # --format and --quantize apply to every exportable task; ExportConfig.validate and
        # keraslm.tflite_export refuse the combinations that do not exist, naming those that do.
        storage = {"format", "quantize", "representative_examples"}
        allowed = {
            "lm": set(settings.flag_names(ExportConfig)) - {"num_beams", "length_penalty"},
            "classify": storage,
            "seq2seq": {"max_new_tokens", "num_beams", "length_penalty", "kv_cache"} | storage,
        }.get(task, set())
        if FLAGS.format == "tflite" and task in ("lm", "classify"):
            # A LiteRT export is one forward pass, without the decoding loop those flags set.
            allowed = storage
        if FLAGS.quantize != "full_integer":
            allowed = allowed - {"representative_examples"}
        refused = [f"--{name}" for name in given if name not in allowed]
        if refused:
            what = {"lm": "a language model", "classify": "a classifier", "seq2seq": "a translation model"}.get(
                task, f"a --task={task} run"
            )
            if "--representative_examples" in refused and FLAGS.quantize != "full_integer":
                what += f" exported with --quantize={FLAGS.quantize} (--representative_examples is for --quantize=full_integer)"
            elif FLAGS.format == "tflite" and task in ("lm", "classify"):
                what += " exported with --format=tflite"
            usable = ", ".join(f"--{name}" for name in sorted(allowed)) or "none of these flags"
            raise InvalidInputError(
                f"{', '.join(refused)}: --work_dir={FLAGS.work_dir} holds {what}, whose export does not use "
                f"{'these flags' if len(refused) > 1 else 'this flag'}; leave {'them' if len(refused) > 1 else 'it'} out "
                f"(it takes {usable})"
            )
    export_config = settings.from_flags(ExportConfig)
    export_config.validate()
    export_from_work_dir(FLAGS.work_dir, FLAGS.export_dir, export_config)


def run():
    define_flags()
    run_main(main, "keraslm-export")


if __name__ == "__main__":
    run()
