"""keraslm-evaluate: perplexity and bits per byte of an exported language model on a text file.

  keraslm-evaluate --model_dir=saved_models/shakespeare --data=held_out.txt --output_json=metrics.json

The last line of stdout is one JSON object: perplexity, bits_per_byte, loss, num_tokens (null
where a value is NaN or infinite, which JSON cannot hold).
"""

import json
import os

from absl import flags

from keraslm.cli.common import run_main

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", "", "A SavedModel version directory, or its base directory (latest version) (required).")
    flags.DEFINE_string("data", "", "UTF-8 text file to evaluate on (required).")
    flags.DEFINE_string("output_json", "", "Also write the JSON object to this file.")


def main(argv):
    del argv
    from keraslm.config import write_json_atomic
    from keraslm.data import read_text_file
    from keraslm.errors import InvalidInputError
    from keraslm.evaluation import evaluate_text, json_safe
    from keraslm.inference import LanguageModel

    for name in ("model_dir", "data"):
        if not FLAGS[name].value:
            raise InvalidInputError(f"--{name} is required")
    text = read_text_file(FLAGS.data, "--data")
    output_dir = os.path.dirname(os.path.abspath(FLAGS.output_json)) if FLAGS.output_json else ""
    if output_dir and not os.path.isdir(output_dir):
        raise InvalidInputError(f"--output_json={FLAGS.output_json}: directory {output_dir} does not exist")
    model = LanguageModel(FLAGS.model_dir)
    sequence_length = model.config["model"]["sequence_length"]
    try:
        metrics = evaluate_text(model, text, sequence_length)
    except InvalidInputError as error:
        raise InvalidInputError(f"--data={FLAGS.data}: {error}") from None
    metrics = json_safe({"model_dir": _text(model.path), "data": _text(FLAGS.data), **metrics})
    # Printed first: a failing write must not lose the run's result. allow_nan=False: the line
    # is always valid JSON (json_safe turned NaN and infinities into null).
    print(json.dumps(metrics, allow_nan=False), flush=True)
    if FLAGS.output_json:
        try:
            write_json_atomic(FLAGS.output_json, metrics)
        except OSError as error:
            raise InvalidInputError(f"--output_json={FLAGS.output_json}: cannot write ({error.strerror})") from None


def _text(path):
    """A path as printable text: bytes that are not UTF-8 (lone surrogates here) become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run():
    define_flags()
    run_main(main, "keraslm-evaluate")


if __name__ == "__main__":
    run()
