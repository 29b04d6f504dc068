"""Export version directories in TF Serving layout, shared by every export format.

<export_dir>/<n>/ is the next free integer (TF Serving serves the largest). A version is written
in a staging directory that TF Serving ignores and renamed when complete, so it appears whole or
not at all. config.json records the run's settings and, under "export", what the export was made
with (the settings a later export compares to tell an export is up to date).
"""

import dataclasses
import os
import shutil
import tempfile

from keraslm.errors import InvalidInputError
from keraslm.files import pid_alive
from keraslm.tasks.seq2seq_export import export_settings as seq2seq_export_settings

CONFIG_ASSET = "config.json"
# A LiteRT export's model (keraslm.tflite_export), beside config.json in its version directory.
TFLITE_FILE = "model.tflite"


_STAGING_PREFIX = ".tmp-export-"


def _remove_dead_staging(export_dir):
    """Removes staging directories of exports killed midway (kill -9, power loss)."""
    for name in os.listdir(export_dir):
        pid = name[len(_STAGING_PREFIX):].split("-", 1)[0]
        if name.startswith(_STAGING_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)


def next_version(export_dir):
    """1 + the largest integer-named subdirectory (TF Serving serves the largest)."""
    versions = [int(name) for name in os.listdir(export_dir) if name.isdigit()] if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


def publish_version(export_dir, write):
    """Runs write(staging directory) -> the directory it filled there, and renames that to
    <export_dir>/<next version>/; returns its path. Every export format goes through here.

    The version directory appears complete or not at all: it is written under a temporary name
    that TF Serving ignores and renamed at the end.
    """
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise InvalidInputError(f"--export_dir={export_dir} is a file, not a directory; pick another --export_dir")
    os.makedirs(export_dir, exist_ok=True)
    _remove_dead_staging(export_dir)
    # The PID in the name lets a later export tell a dead export's leftovers from a live one's.
    staging = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=export_dir)
    try:
        written = write(staging)
        while True:
            version_dir = os.path.join(export_dir, str(next_version(export_dir)))
            try:
                os.rename(written, version_dir)
                return version_dir
            except OSError:
                if not os.path.exists(version_dir):
                    raise
                # Another export took this number meanwhile: take the next one.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_settings(run_config, export_config):
    """{"export": ...}: the decoding defaults of a language or translation model, and for every
    task the format and quantization of the weights."""
    if export_config.format == "tflite":
        # A LiteRT model has no decoding loop (keraslm.tflite_export): decoding settings do not apply.
        full_integer = export_config.quantize == "full_integer"
        settings = {"representative_examples": export_config.representative_examples} if full_integer else {}
    elif run_config.task == "seq2seq":
        settings = seq2seq_export_settings(run_config, export_config)
    elif run_config.task == "lm":
        settings = dataclasses.asdict(export_config)
    else:
        settings = {}
    # How the weights are stored: a float and an int8 export of one checkpoint are different exports.
    settings = {**settings, "format": export_config.format, "quantize": export_config.quantize}
    return {"export": settings}
