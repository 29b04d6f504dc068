"""keraslm-generate: continue a prompt with an exported language model.

  keraslm-generate --model_dir=saved_models/shakespeare --prompt="ROMEO:" --max_new_tokens=200 --seed=1
"""

import sys

from absl import flags

from keraslm.cli.common import run_main

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", "", "A SavedModel version directory, or its base directory (latest version) (required).")
    flags.DEFINE_string("prompt", "", "Text to continue; empty starts from a line break.")
    flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate.")
    flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy (always the most likely token).")
    flags.DEFINE_integer("seed", None, "Random seed; the same seed, prompt and settings give the same text. Unset: random.")


def main(argv):
    del argv
    from keraslm.errors import InvalidInputError
    from keraslm.inference import LanguageModel

    if not FLAGS.model_dir:
        raise InvalidInputError("--model_dir is required: the --export_dir of keraslm-train or keraslm-export")
    if FLAGS.max_new_tokens < 1:
        raise InvalidInputError(f"--max_new_tokens={FLAGS.max_new_tokens} must be at least 1")
    if FLAGS.temperature < 0:
        raise InvalidInputError(f"--temperature={FLAGS.temperature} must be 0 (greedy) or positive")
    model = LanguageModel(FLAGS.model_dir)
    (continuation,) = model.generate([FLAGS.prompt], FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.seed)
    sys.stdout.write(FLAGS.prompt + continuation + "\n")
    sys.stdout.flush()


def run():
    define_flags()
    run_main(main, "keraslm-generate")


if __name__ == "__main__":
    run()
