"""Finds and restores the newest checkpoint of a work directory that can actually be read.

tf.train.CheckpointManager trusts its `checkpoint` index file: when that file is missing or
unreadable it reports no checkpoint at all (and a trainer would start over on top of intact
files), and when the newest checkpoint it lists is truncated, restoring it raises deep inside TF.
Here the index is only a hint: the checkpoints are the `ckpt-<step>.index` files themselves, tried
newest first until one restores completely.
"""

import os
import re

import tensorflow as tf

from keraslm.errors import InvalidInputError

INDEX_FILE = "checkpoint"
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)\.index$")
_INDEX_LINE = re.compile(
    r'^(model_checkpoint_path|all_model_checkpoint_paths): "([^"\\]*)"$'
    r"|^(?:all_model_checkpoint_timestamps|last_preserved_timestamp): [0-9.eE+-]+$"
)


def checkpoint_files(directory):
    """Prefixes of every `ckpt-<step>` in `directory`, newest (largest step) first."""
    if not os.path.isdir(directory):
        return []
    steps = [int(match.group(1)) for match in map(_CHECKPOINT_NAME.match, os.listdir(directory)) if match]
    return [os.path.join(directory, f"ckpt-{step}") for step in sorted(steps, reverse=True)]


def read_index(directory):
    """(latest prefix, listed prefixes) from the index file, or (None, None) if it cannot be read.

    Parsed here rather than with tf.train.get_checkpoint_state, which logs warnings on a damaged
    file and raises on bytes that are not UTF-8. The file is a text proto of three fields.
    """
    path = os.path.join(directory, INDEX_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            lines = [line.strip() for line in file if line.strip()]
    except (OSError, UnicodeDecodeError):
        return None, None
    fields = [_INDEX_LINE.match(line) for line in lines]
    if not fields or not all(fields):
        return None, None
    latest = [match.group(2) for match in fields if match.group(1) == "model_checkpoint_path"]
    listed = [match.group(2) for match in fields if match.group(1) == "all_model_checkpoint_paths"]
    if len(latest) != 1 or latest[0] is None:
        return None, None
    absolute = lambda prefix: prefix if os.path.isabs(prefix) else os.path.join(directory, prefix)  # noqa: E731
    return absolute(latest[0]), [absolute(prefix) for prefix in listed if prefix is not None]


def step_of(prefix):
    return int(prefix.rsplit("-", 1)[1])


def _first_line(error):
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0][:200]


def restore_newest_intact(checkpoint, directory, where, partial=False, say=print, advice=None):
    """Restores `checkpoint` from the newest readable checkpoint in `directory`.

    Returns the prefix restored, or None when the directory holds no checkpoint files. Every
    checkpoint passed over is named on one line through `say`. `partial=True` allows objects in
    the file that `checkpoint` does not track (an export restores the model without its optimizer).
    Raises InvalidInputError naming `where` when checkpoint files exist and none can be read:
    starting over would write over them.
    """
    latest, listed = read_index(directory)
    on_disk = checkpoint_files(directory)
    if latest is None and on_disk:
        say(f"keraslm: {os.path.join(directory, INDEX_FILE)} is missing or unreadable; using the checkpoint files themselves")
    # With a readable index, checkpoints it no longer lists (left behind by an earlier fallback)
    # are not candidates; without one, every file is.
    candidates = [prefix for prefix in on_disk if listed is None or prefix in listed or prefix == latest]
    failures = []
    for prefix in candidates:
        try:
            status = checkpoint.restore(prefix)
            if partial:
                status.expect_partial()
            status.assert_existing_objects_matched()
        except (tf.errors.OpError, IndexError, ValueError, AssertionError) as error:
            # A truncated data file raises IndexError ("Read less bytes than requested"), a bad
            # index file OpError ("not an sstable"), a missing one NotFoundError.
            failures.append(f"{os.path.basename(prefix)}: {_first_line(error)}")
            continue
        if failures:
            say(
                f"keraslm: {'; '.join(failures)}; restored {prefix} (step {step_of(prefix)}), "
                "the newest checkpoint that can be read"
            )
        elif latest is not None and prefix != latest:
            say(f"keraslm: using {prefix}, the newest checkpoint file, instead of the index's {latest}")
        return prefix
    if failures:
        advice = advice or (
            "nothing was changed. Restore the checkpoints/ files from a backup, or delete the work directory to start over"
        )
        raise InvalidInputError(f"{where}: none of its checkpoints can be read ({'; '.join(failures)}); {advice}")
    return None


def rewrite_index(directory, latest):
    """Points the index at `latest`, listing it and the older checkpoint files, oldest first.

    Written by hand (the format is a three-field text proto) because TF's writer for it is
    deprecated and logs a warning. Timestamps come from the files, so CheckpointManager's
    max_to_keep goes on deleting the oldest ones (without timestamps it would keep them forever).
    """
    keep = [prefix for prefix in reversed(checkpoint_files(directory)) if step_of(prefix) <= step_of(latest)]
    lines = [f'model_checkpoint_path: "{os.path.basename(latest)}"']
    lines += [f'all_model_checkpoint_paths: "{os.path.basename(prefix)}"' for prefix in keep]
    lines += [f"all_model_checkpoint_timestamps: {os.path.getmtime(f'{prefix}.index')!r}" for prefix in keep]
    path = os.path.join(directory, INDEX_FILE)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    os.replace(temporary, path)
