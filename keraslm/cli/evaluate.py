"""keraslm-evaluate: how good an export is on a file, for each kind of export.

  keraslm-evaluate --model_dir=saved_models/shakespeare --data=held_out.txt --output_json=metrics.json
  keraslm-evaluate --model_dir=saved_models/sst2 --data=data/sst2/dev.tsv --plot_dir=plots
  keraslm-evaluate --model_dir=saved_models/en_fr --data=data/en_fr/pairs.tsv --held_out --num_beams=4

The last line of stdout is one JSON object. Language models (a UTF-8 text file): perplexity,
bits_per_byte, loss, num_tokens. Classifiers (a CSV/TSV/JSONL(.gz) file with a header, columns as
in training): accuracy, macro_f1, per_class {precision, recall, f1, support}, labels,
confusion_matrix (rows: true label, columns: predicted), num_examples. Translation models (a
sentence-pair file, columns as in training): bleu and chrf (sacrebleu, corpus level, every
reference of a source counted; bleu_signature names the tokenizer, 13a), exact_match,
num_sources, num_pairs, max_references, tokens_per_second, seconds, held_out and the decoding
settings used; --held_out scores only the pairs training held out for validation. Values JSON
cannot hold (NaN, infinity) are null.
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
        "data",
        "",
        "File to evaluate on (required): UTF-8 text for a language model; CSV, TSV or JSONL(.gz) for a classifier; "
        "a sentence-pair file (as keraslm-train --task=seq2seq reads) for a translation model.",
    )
    flags.DEFINE_string("output_json", "", "Also write the JSON object to this file.")
    flags.DEFINE_string("plot_dir", "", "Classifiers: also write confusion_matrix.png into this directory.")
    # The same column flags as keraslm-train's.
    settings.define_flags(
        TrainConfig,
        names=("text_column", "label_column", "source_column", "target_column"),
        help_override={
            "text_column": "Classifiers: the column (field) of --data holding the text. Empty: text, sentence, review, content or document.",
            "label_column": "Classifiers: the column (field) of --data holding the label.",
            "source_column": "Translation models: the column of --data holding the sentence to translate, named or "
            "numbered as in keraslm-train. Empty: the one the model was trained with.",
            "target_column": "Translation models: the column of --data holding its reference translation. Empty: the one "
            "the model was trained with.",
        },
    )
    # Translation models only; the other kinds refuse them rather than ignore them.
    flags.DEFINE_bool(
        "held_out",
        False,
        "Translation models: score only the pairs training held out for validation (its --seed and --valid_fraction "
        "split of --data, which must then be the --train_data file it was trained on).",
    )
    flags.DEFINE_integer("max_new_tokens", None, "Translation models: most tokens per translation. Unset: the export's.")
    flags.DEFINE_integer(
        "num_beams", None, "Translation models: beams of the beam search; 1 decodes greedily. Unset: the export's."
    )
    flags.DEFINE_float(
        "length_penalty",
        None,
        "Translation models: the beam-search length penalty (0: the plain log-probability). Unset: the export's.",
    )


# Flags only a translation model uses.
TRANSLATION_FLAGS = ("held_out", "max_new_tokens", "num_beams", "length_penalty", "source_column", "target_column")


def main(argv):
    del argv
    from keraslm.config import write_json_atomic
    from keraslm.errors import InvalidInputError
    from keraslm.evaluation import json_safe
    from keraslm.inference import Classifier, Translator, load

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
    kinds = ((Translator, "a translation model"), (Classifier, "a text classifier"))
    kind = next((name for cls, name in kinds if isinstance(model, cls)), "a language model")
    if not isinstance(model, Translator):
        given = [f"--{name}" for name in TRANSLATION_FLAGS if FLAGS[name].present]
        if given:
            verb = "is" if len(given) == 1 else "are"
            raise InvalidInputError(f"{', '.join(given)} {verb} for translation models; this is {kind}")
    if FLAGS.plot_dir and not isinstance(model, Classifier):
        raise InvalidInputError(f"--plot_dir draws a classifier's confusion matrix; this is {kind}")
    if isinstance(model, Translator):
        metrics = _evaluate_translator(model)
    elif isinstance(model, Classifier):
        metrics = _evaluate_classifier(model)
    else:
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


def _evaluate_translator(translator):
    from keraslm import pairs as pairs_lib
    from keraslm.errors import InvalidInputError
    from keraslm.translation_evaluation import evaluate_translator

    train = translator.config["train"]
    # Checked before the file is read and the model runs, which can take minutes.
    if FLAGS.held_out and train.get("valid_data"):
        raise InvalidInputError(
            f"--held_out: this model was trained with --valid_data={train['valid_data']}, so it held nothing out "
            "of its training file; pass that file as --data instead (without --held_out)"
        )
    decoding = translator.decoding_controls(FLAGS.max_new_tokens, None, FLAGS.num_beams, FLAGS.length_penalty, None, prefix="--")
    pairs = pairs_lib.read_pairs(
        FLAGS.data,
        "--data",
        FLAGS.source_column or train.get("source_column", ""),
        FLAGS.target_column or train.get("target_column", ""),
        say=lambda message: print(message, file=sys.stderr, flush=True),
    )
    if FLAGS.held_out:
        # The split training made: same pairs, fraction and seed give the same held-out sources.
        _, pairs = pairs_lib.split_by_source(pairs, train["valid_fraction"], train["seed"])
    metrics = evaluate_translator(
        translator,
        pairs,
        max_new_tokens=decoding["max_new_tokens"],
        num_beams=decoding["num_beams"],
        length_penalty=decoding["length_penalty"],
    )
    return {**metrics, "held_out": FLAGS.held_out}


def _text(path):
    """A path as printable text: bytes that are not UTF-8 (lone surrogates here) become U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run():
    define_flags()
    run_main(main, "keraslm-evaluate")


if __name__ == "__main__":
    run()
