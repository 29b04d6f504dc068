"""keraslm-translate: translate sentences with an exported translation (seq2seq) model.

  keraslm-translate --model_dir=saved_models/en_fr --text="How are you?" --text="I am cold."
  keraslm-translate --model_dir=saved_models/en_fr --input_file=english.txt --output_file=french.txt --num_beams=1

Prints one translation per line, in order: the --text sources first, then one per line of
--input_file. Every input line gets an output line (an empty line an empty one, untranslated), so
the output lines up with the input; a line break inside a translation becomes a space.
Unset decoding flags take the export's own settings (those of its serving_default signature).
"""

import os
import sys

from absl import flags

from keraslm.cli.common import check_utf8_flag, run_main

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string(
        "model_dir", "", "A translation model's SavedModel version directory, or its base directory (latest version) (required)."
    )
    flags.DEFINE_multi_string("text", [], "A sentence to translate; repeat the flag for several.")
    flags.DEFINE_string(
        "input_file", "", "UTF-8 file with one sentence per line, translated after any --text; - reads standard input."
    )
    flags.DEFINE_string("output_file", "", "Write the translations to this file (one per line) instead of standard output.")
    flags.DEFINE_integer("max_new_tokens", None, "Most tokens to generate per translation. Unset: the export's --max_new_tokens.")
    flags.DEFINE_integer(
        "num_beams",
        None,
        "Beam search with this many beams; 1 decodes greedily, or samples with --temperature. Unset: the export's.",
    )
    flags.DEFINE_float(
        "length_penalty",
        None,
        "Beam search ranks translations by log-probability / ((5 + length) / 6) ** this; 0 favours short ones. "
        "Unset: the export's.",
    )
    flags.DEFINE_float(
        "temperature",
        None,
        "With --num_beams=1: sample at this temperature; 0 (the default) is greedy. Refused with beam search.",
    )
    flags.DEFINE_integer(
        "seed", None, "With --num_beams=1 and --temperature > 0: the random seed (same seed, same output). Unset: random."
    )
    flags.DEFINE_integer("batch_size", 64, "Sentences per call into the model: more is faster, and takes more memory.")


def _read_input_file(path):
    """The lines of --input_file (or standard input for -), without their line breaks."""
    from keraslm.errors import InvalidInputError
    from keraslm.files import read_utf8

    if path == "-":
        data = sys.stdin.buffer.read()
        try:
            content = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise InvalidInputError(
                f"--input_file=- (standard input): line {line}: byte 0x{data[error.start]:02x} is not valid UTF-8; "
                "pass UTF-8 text (e.g. through iconv -f latin1 -t utf-8)"
            ) from None
    else:
        content = read_utf8(path, "--input_file", "a UTF-8 text file with one sentence per line")
    # One sentence per line; a final line break ends the last line rather than adding one.
    lines = content[:-1].split("\n") if content.endswith("\n") else content.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return [] if lines == [""] else lines


def _check_output_file(path):
    """Checked before translating, which can take minutes."""
    from keraslm.errors import InvalidInputError

    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InvalidInputError(f"--output_file={path} is a directory; give a file name")
    if not os.path.isdir(directory):
        raise InvalidInputError(f"--output_file={path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise InvalidInputError(f"--output_file={path}: cannot write in {directory} (permission denied)")


def main(argv):
    del argv
    from keraslm.errors import InvalidInputError
    from keraslm.files import replaceable_path
    from keraslm.inference import Translator

    if not FLAGS.model_dir:
        raise InvalidInputError("--model_dir is required: the --export_dir of a keraslm-train --task=seq2seq run")
    if not FLAGS.text and not FLAGS.input_file:
        raise InvalidInputError("nothing to translate: give --text (repeatable) or --input_file")
    if FLAGS.batch_size < 1:
        raise InvalidInputError(f"--batch_size={FLAGS.batch_size} must be at least 1")
    if FLAGS.output_file:
        _check_output_file(FLAGS.output_file)
    check_utf8_flag("text", FLAGS.text, ", or put the sentences in a UTF-8 file for --input_file")
    sources = list(FLAGS.text) + (_read_input_file(FLAGS.input_file) if FLAGS.input_file else [])
    if not sources:
        raise InvalidInputError(f"--input_file={FLAGS.input_file} has no lines; give a file with one sentence per line")
    translator = Translator(FLAGS.model_dir)
    decoding = translator.decoding_controls(
        FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.num_beams, FLAGS.length_penalty, FLAGS.seed, prefix="--"
    )
    if decoding["num_beams"] > 1:
        del decoding["temperature"], decoding["seed"]  # Refused with beam search; checked above.
    if FLAGS.output_file:
        target, atomic = replaceable_path(FLAGS.output_file)
        if not atomic:  # /dev/stdout, a named pipe: written as it is, never replaced.
            with _opened(target, "w") as output:
                _translate(translator, sources, decoding, output)
            return
        # Beside the destination, so the rename below is atomic: a reader never sees half a file.
        temporary = f"{target}.tmp-{os.getpid()}"
        try:
            with _opened(temporary, "w") as output:
                _translate(translator, sources, decoding, output)
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    else:
        _translate(translator, sources, decoding, sys.stdout)


def _opened(path, mode):
    from keraslm.errors import InvalidInputError

    try:
        return open(path, mode, encoding="utf-8")
    except OSError as error:
        raise InvalidInputError(f"--output_file={FLAGS.output_file}: cannot write ({error.strerror})") from None


def _translate(translator, sources, decoding, output):
    """Writes each batch's translations as it is done, so a pipe sees output as it comes."""
    for start in range(0, len(sources), FLAGS.batch_size):
        batch = sources[start : start + FLAGS.batch_size]
        # Empty lines stay empty: a model asked to translate nothing would make something up.
        wanted = [source for source in batch if source.strip()]
        translations = iter(translator.translate(wanted, **decoding) if wanted else [])
        for source in batch:
            text = next(translations) if source.strip() else ""
            output.write(" ".join(text.splitlines()) + "\n")
        output.flush()


def run():
    define_flags()
    run_main(main, "keraslm-translate")


if __name__ == "__main__":
    run()
