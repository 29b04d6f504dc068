"""What every keraslm command shares: one-line errors and exit codes."""

import os
import sys
import tempfile

from absl import app, flags, logging

from keraslm.errors import UserInputError

EXIT_USAGE = 2


_program = "keraslm"


def import_tensorflow_quietly():
    """Imports TensorFlow with its native start-up chatter kept off the terminal.

    Loading TF prints CUDA probing and oneDNN notices from C++ straight to file descriptor 2,
    before its log settings apply (TF_CPP_MIN_LOG_LEVEL does not hide them in TF 2.21); they
    would bury the one-line messages these tools print. They are captured here and shown only if
    the import fails.
    """
    if "tensorflow" in sys.modules:
        return
    # Hides TF's native INFO and WARNING lines after start-up (XLA compilation notices).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # Device probing prints too.
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def fail(message):
    """Prints one line on stderr and exits non-zero, without a traceback."""
    print(f"{_program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def _parse_flags(argv):
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:
        fail(f"{error} (see --help)")
    if len(remaining) > 1:
        fail(f"unexpected argument {remaining[1]!r}; every setting is a --flag (see --help)")
    return remaining


def run_main(main, program):
    """absl's app.run, with user errors printed on one line instead of a traceback."""
    global _program
    _program = program

    def guarded(argv):
        # TensorFlow's Python INFO lines (checkpoint sharding, signature renames) are noise here.
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            import_tensorflow_quietly()
            main(argv)
        except UserInputError as error:
            fail(str(error))
        except KeyboardInterrupt:
            print(f"{_program}: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    app.run(guarded, flags_parser=_parse_flags)
