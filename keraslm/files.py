"""Facts about processes and file systems that staging and crash recovery rely on."""

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
