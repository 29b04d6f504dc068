"""Facts about processes and file systems that staging and crash recovery rely on, atomic writes,
and reading users' input files with errors that name the flag, file and position."""

import errno
import gzip
import os
import zlib

from keraslm.errors import InputNotFoundError, InvalidInputError


def read_utf8(path, flag, what):
    """The whole file (gunzipped if its name ends in .gz) as str; `what` names the kind of file
    wanted in the errors ("a UTF-8 text file"), which name the flag, file and position."""
    if not path:
        raise InvalidInputError(f"{flag} is empty; give the path of {what}")
    if not os.path.exists(path):
        raise InputNotFoundError(f"{flag}={path}: no such file; check the path")
    if os.path.isdir(path):
        raise InvalidInputError(f"{flag}={path} is a directory; give {what} inside it")
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as error:
        if path.endswith(".gz") and not isinstance(error, PermissionError):
            raise InvalidInputError(
                f"{flag}={path}: not a complete gzip file ({error}); re-create it with gzip, or drop the .gz ending "
                "if it is not compressed"
            ) from None
        raise InvalidInputError(f"{flag}={path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    try:
        # utf-8-sig drops the byte-order mark some Windows editors write.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise InvalidInputError(
            f"{flag}={path}: line {line}, column {column} (byte offset {error.start}): byte "
            f"0x{data[error.start]:02x} is not valid UTF-8; convert the file to UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8)"
        ) from None


def pid_alive(pid):
    """Whether a process with this id exists (staging directories carry their writer's PID)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # It exists; it belongs to someone else.
    return True


def is_disk_full(error):
    """True for 'no space left' however it arrives: an OSError, or a TensorFlow error's message."""
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(error)


def save_figure_atomic(figure, path):
    """Saves a matplotlib figure as a PNG a reader never sees half-written, then closes it."""
    from matplotlib import pyplot

    temporary = f"{path}.tmp-{os.getpid()}.png"
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    finally:
        pyplot.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)


def replaceable_path(path):
    """(where to write, whether a temporary file renamed over it is safe) for an output file.

    Writing beside the destination and renaming keeps a reader (or a crash) from seeing half a
    file, but a rename replaces whatever the name points at: a symbolic link would become a
    plain file (its target untouched), and /dev/stdout or a named pipe would be replaced by a
    file (as root, for every other process too). So links are followed to their target, and
    anything that exists and is not a regular file is written in place.
    """
    target = os.path.realpath(path) if os.path.islink(path) else path
    return target, not os.path.exists(target) or os.path.isfile(target)
