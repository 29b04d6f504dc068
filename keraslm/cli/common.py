"""What every keraslm command shares: one-line errors and exit codes."""

import os
import sys

from absl import app, flags, logging

from keraslm.errors import UserInputError
from keraslm.files import is_disk_full

EXIT_USAGE = 2
# 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe.
EXIT_BROKEN_PIPE = 141


_program = "keraslm"


# Shared with the Python API (keraslm.load), which prints as little as the commands.
from keraslm.tf_import import import_tensorflow_quietly  # noqa: E402


def fail(message):
    """Prints one line on stderr and exits non-zero, without a traceback."""
    print(f"{_program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def check_utf8_flag(name, values, advice=""):
    """Flags arrive from the shell as bytes; those that are not UTF-8 reach Python as lone
    surrogates, which no model can take: a one-line error naming the flag instead."""
    from keraslm.errors import InvalidInputError
    from keraslm.inference import utf8_error

    for index, value in enumerate(values):
        problem = utf8_error(value)
        if problem:
            which = f" (number {index + 1})" if len(values) > 1 else ""
            raise InvalidInputError(
                f"--{name}{which} is not UTF-8 text: {problem}; pass UTF-8 (check the terminal's encoding){advice}"
            )


def _parse_flags(argv):
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:
        fail(f"{error} (see --help)")
    if len(remaining) > 1:
        fail(f"unexpected argument {remaining[1]!r}; every setting is a --flag (see --help)")
    return remaining


def _environment_error(error):
    """A one-line description of a failure the machine caused (permissions, full disk), else None.

    Such errors are the user's to fix, like bad input, so they get one line, not a traceback.
    TensorFlow reports its own file writes as tf.errors.OpError subclasses, not OSError.
    """
    where = f"{error.filename}: " if getattr(error, "filename", None) else ""
    if is_disk_full(error):
        return f"{where}no space left on device; free some space and run the command again"
    if isinstance(error, PermissionError) or type(error).__name__ == "PermissionDeniedError":
        text = f"{where}permission denied" if where else str(getattr(error, "message", error)).splitlines()[0]
        return f"{text}; use a directory you can write to (or fix its permissions)"
    if isinstance(error, OSError):
        return f"{where}{error.strerror or error}"
    return None


def _show_flags_in_help(main):
    """Lists the command's flags under --help/--helpshort when run as an installed script.

    absl shows the flags of the module named sys.argv[0]: right for `python -m keraslm.cli.train`,
    but an entry-point script (.venv/bin/keraslm-train) defines none itself.
    """
    for flag in flags.FLAGS.get_flags_for_module(main.__module__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run_main(main, program):
    """absl's app.run, with user and environment errors printed on one line instead of a traceback."""
    global _program
    _program = program
    _show_flags_in_help(main)

    def guarded(argv):
        # TensorFlow's Python INFO lines (checkpoint sharding, signature renames) are noise here.
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            import_tensorflow_quietly()
            main(argv)
        except UserInputError as error:
            fail(str(error))
        except BrokenPipeError:
            # The reader went away (`keraslm-generate ... | head -1`): stop quietly, as cat does,
            # and keep Python from failing again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_BROKEN_PIPE)
        except KeyboardInterrupt:
            print(f"{_program}: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)
        except Exception as error:  # noqa: BLE001  Re-raised below unless the machine caused it.
            message = _environment_error(error)
            if message is None:
                raise
            fail(message)

    app.run(guarded, flags_parser=_parse_flags)
