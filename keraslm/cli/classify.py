"""keraslm-classify: label texts with an exported text classifier.

  keraslm-classify --model_dir=saved_models/sst2 --text="a gorgeous, witty film" --text="a dull mess"
  keraslm-classify --model_dir=saved_models/waimai --input_file=reviews.txt > labels.tsv

Prints one line per text, in order: the label, a tab, and its probability (4 decimals).
--input_file gives one text per line, and every line gets an output line (an empty line too),
so the output lines up with the input.
"""

import sys

from absl import flags

from keraslm.cli.common import check_utf8_flag, run_main

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", "", "A classifier's SavedModel version directory, or its base directory (latest version) (required).")
    flags.DEFINE_multi_string("text", [], "Text to classify; repeat the flag for several texts.")
    flags.DEFINE_string("input_file", "", "UTF-8 file with one text per line (classified after any --text).")
    flags.DEFINE_bool("show_text", False, "Also print each text after its label and score (tab-separated).")


def _texts():
    texts = list(FLAGS.text)
    if FLAGS.input_file:
        # Imported only here: keraslm.data imports tensorflow-text's Python package (seconds).
        from keraslm.data import read_text_file

        content = read_text_file(FLAGS.input_file, "--input_file")
        # One text per line; a final line break ends the last line rather than adding one.
        texts += content[:-1].split("\n") if content.endswith("\n") else content.split("\n")
        texts = [text[:-1] if text.endswith("\r") else text for text in texts]
    return texts


def main(argv):
    del argv
    from keraslm.errors import InvalidInputError
    from keraslm.inference import Classifier

    if not FLAGS.model_dir:
        raise InvalidInputError("--model_dir is required: the --export_dir of a keraslm-train --task=classify run")
    if not FLAGS.text and not FLAGS.input_file:
        raise InvalidInputError("nothing to classify: give --text (repeatable) or --input_file")
    check_utf8_flag("text", FLAGS.text, ", or put the texts in a UTF-8 file for --input_file")
    texts = _texts()
    classifier = Classifier(FLAGS.model_dir)
    for text, result in zip(texts, classifier.classify(texts)):
        line = f"{result.label}\t{result.score:.4f}"
        if FLAGS.show_text:
            line += "\t" + " ".join(text.split())  # Tabs and line breaks would break the columns.
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run():
    define_flags()
    run_main(main, "keraslm-classify")


if __name__ == "__main__":
    run()
