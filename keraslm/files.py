"""Facts about processes and file systems that staging and crash recovery rely on, and atomic writes."""

import errno
import os


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
