"""keraslm-evaluate: how good an export is on a file, for each kind of export.

  keraslm-evaluate --model_dir=saved_models/shakespeare --data=held_out.txt --output_json=metrics.json
  keraslm-evaluate --model_dir=saved_models/sst2 --data=data/sst2/dev.tsv --plot_dir=plots

The last line of stdout is one JSON object. Language models (a UTF-8 text file): perplexity,
bits_per_byte, loss, num_tokens. Classifiers (a CSV/TSV/JSONL(.gz) file with a header, columns as
in training): accuracy, macro_f1, per_class {precision, recall, f1, support}, labels,
confusion_matrix (rows: true label, columns: predicted), num_examples. Values JSON cannot hold
(NaN, infinity) are null.
"""

import json
import os
import sys

from absl import flags

from keraslm.cli import settings
from keraslm.cli.common import run_main
from keraslm.config import TrainConfig

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", "", "A SavedModel version directory, or its base directory (latest version) (required).")
    flags.DEFINE_string(
        "data", "", "File to evaluate on (required): UTF-8 text for a language model; CSV, TSV or JSONL(.gz) for a classifier."
    )
    flags.DEFINE_string("output_json", "", "Also write the JSON object to this file.")
    flags.DEFINE_string("plot_dir", "", "Classifiers: also write confusion_matrix.png into this directory.")
    # The same column flags as keraslm-train's.
    settings.define_flags(
        TrainConfig,
        names=("text_column", "label_column"),
        help_override={
            "text_column": "Classifiers: the column (field) of --data holding the text. Empty: text, sentence, review, content or document.",
            "label_column": "Classifiers: the column (field) of --data holding the label.",
        },
    )


def main(argv):
    del argv
    from keraslm.config import write_json_atomic
    from keraslm.errors import InvalidInputError
    from keraslm.evaluation import json_safe
    from keraslm.inference import Classifier, load

    for name in ("model_dir", "data"):
        if not FLAGS[name].value:
            raise InvalidInputError(f"--{name} is required")
    if FLAGS.output_json:
        # Checked before the evaluation runs, which can take minutes.
        output_dir = os.path.dirname(os.path.abspath(FLAGS.output_json))
        if os.path.isdir(FLAGS.output_json):
            raise InvalidInputError(f"--output_json={FLAGS.output_json} is a directory; give a file name")
        if os.path.exists(output_dir) and not os.path.isdir(output_dir):
            raise InvalidInputError(f"--output_json={FLAGS.output_json}: {output_dir} is a file, not a directory")
        if not os.path.isdir(output_dir):
            raise InvalidInputError(f"--output_json={FLAGS.output_json}: directory {output_dir} does not exist")
        if not os.access(output_dir, os.W_OK):
            raise InvalidInputError(f"--output_json={FLAGS.output_json}: cannot write in {output_dir} (permission denied)")
    if FLAGS.plot_dir and os.path.exists(FLAGS.plot_dir) and not os.path.isdir(FLAGS.plot_dir):
        raise InvalidInputError(f"--plot_dir={FLAGS.plot_dir} is a file; give a directory (it is created if missing)")
    model = load(FLAGS.model_dir)
    if isinstance(model, Classifier):
        metrics = _evaluate_classifier(model)
    else:
        if FLAGS.plot_dir:
            raise InvalidInputError("--plot_dir draws a classifier's confusion matrix; this is a language model")
        metrics = _evaluate_language_model(model)
    metrics = json_safe({"model_dir": _text(model.path), "data": _text(FLAGS.data), **metrics})
    # Printed first: a failing write must not lose the run's result. allow_nan=False: the line
    # is always valid JSON (json_safe turned NaN and infinities into null).
    print(json.dumps(metrics, allow_nan=False), flush=True)
    if FLAGS.output_json:
        try:
            write_json_atomic(FLAGS.output_json, metrics)
        except OSError as error:
            raise InvalidInputError(f"--output_json={FLAGS.output_json}: cannot write ({error.strerror})") from None


def _evaluate_language_model(model):
    from keraslm.data import read_text_file
    from keraslm.errors import InvalidInputError
    from keraslm.evaluation import evaluate_text

    text = read_text_file(FLAGS.data, "--data")
    try:
        return evaluate_text(model, text, model.config["model"]["sequence_length"])
    except InvalidInputError as error:
        raise InvalidInputError(f"--data={FLAGS.data}: {error}") from None


def _evaluate_classifier(classifier):
    from keraslm import tables
    from keraslm.classifier_evaluation import evaluate_classifier, plot_confusion_matrix

    table = tables.read_table(FLAGS.data, "--data", FLAGS.text_column, FLAGS.label_column)
    metrics = evaluate_classifier(classifier, table)
    if FLAGS.plot_dir:
        path = plot_confusion_matrix(metrics, FLAGS.plot_dir)
        print(f"keraslm: wrote {path}", file=sys.stderr, flush=True)
    return metrics


def _text(path):
    """A path as printable text: bytes that are not UTF-8 (lone surrogates here) become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run():
    define_flags()
    run_main(main, "keraslm-evaluate")


if __name__ == "__main__":
    run()
