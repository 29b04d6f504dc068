"""The training work directory: one run at a time, created whole, never overwritten by a resume.

A work directory is a keraslm run once it holds config.json; config.json is the last thing moved
into place when a run is created, after its tokenizer. Until then the run's files live in
`<work_dir>/.staging-<pid>/`, so a failure or kill -9 leaves no half-made run: the next run on the
directory removes such leftovers. The directory itself is locked (flock on its descriptor) for the
whole run, so a second keraslm-train on it stops with a one-line error instead of training too;
the kernel drops the lock when the process dies, however it dies.
"""

import dataclasses
import fcntl
import os
import shutil

from keraslm.config import config_differences, load_run_config
from keraslm.errors import InvalidInputError
from keraslm.files import pid_alive

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
# Token shards (keraslm.token_store). Written in place, not staged, so that a killed tokenizing
# process resumes: a directory holding only these is not yet a run, and a new run may use it.
TOKENS_DIR = "tokens"
_STAGING_PREFIX = ".staging-"


class WorkDir:
    """An open, locked work directory. Use as a context manager: `with WorkDir(path, flag) as w:`."""

    def __init__(self, path, flag="--work_dir"):
        self.display = f"{flag}={path}"
        if os.path.isfile(path):
            raise InvalidInputError(f"{self.display} is a file, not a directory; pick another --work_dir")
        # A symlink is followed: the run lives where it points ("." and ".." work too).
        self.path = os.path.realpath(path)
        self.created = False
        self._descriptor = None

    # === Opening and locking ===

    def __enter__(self):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            os.mkdir(self.path)
            self.created = True
        except FileExistsError:
            if not os.path.isdir(self.path):
                raise InvalidInputError(f"{self.display} is a file, not a directory; pick another --work_dir") from None
        except OSError as error:
            raise InvalidInputError(f"{self.display}: cannot create it ({error.strerror}); pick a directory you can write to") from None
        self._descriptor = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._descriptor)
            self._descriptor = None
            self.created = False  # Another run owns it now; never remove it.
            raise InvalidInputError(
                f"{self.display} is in use by another keraslm-train run; wait for it to finish, or use another --work_dir"
            ) from None
        self._remove_leftovers()
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None and self._descriptor is not None:
            shutil.rmtree(self.file(f"{_STAGING_PREFIX}{os.getpid()}"), ignore_errors=True)
            # Bad input leaves nothing behind; Ctrl-C keeps the token shards written so far.
            if self.created and not self.is_run() and not issubclass(kind, KeyboardInterrupt):
                # A new directory that never became a run: leave nothing behind.
                shutil.rmtree(self.path, ignore_errors=True)
        if self._descriptor is not None:
            os.close(self._descriptor)  # Releases the lock.
            self._descriptor = None
        return False

    def _remove_leftovers(self):
        """Staging directories of dead runs (kill -9 while creating); we hold the lock, so all are."""
        for name in os.listdir(self.path):
            if name.startswith(_STAGING_PREFIX):
                shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
        if not self.is_run() and set(os.listdir(self.path)) - {TOKENS_DIR} == {TOKENIZER_DIR}:
            # Killed between moving the tokenizer and config.json into place.
            shutil.rmtree(os.path.join(self.path, TOKENIZER_DIR), ignore_errors=True)
        # Earlier keraslm versions staged beside the directory as <work_dir>.tmp-<pid>.
        parent, base = os.path.split(self.path)
        try:
            siblings = os.listdir(parent)
        except OSError:
            siblings = []
        for name in siblings:
            suffix = name[len(base) + len(".tmp-"):]
            if name.startswith(f"{base}.tmp-") and suffix.isdigit() and not pid_alive(int(suffix)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)

    # === What it holds ===

    def file(self, name):
        return os.path.join(self.path, name)

    def is_run(self):
        return os.path.isfile(self.file(CONFIG_FILE))

    def saved_config(self, config):
        """The run's config.json when `config` may continue it; None for an empty directory.

        Refuses (InvalidInputError) a directory that is not a keraslm run, a run with other model or
        tokenizer settings, and a run whose tokenizer is gone: retraining one from today's
        --train_data would silently remap every id the checkpoint was trained on.
        """
        if not self.is_run():
            if set(os.listdir(self.path)) - {TOKENS_DIR}:
                raise InvalidInputError(
                    f"{self.display} exists, is not empty and has no {CONFIG_FILE}; "
                    "it is not a keraslm work directory, so pick another --work_dir"
                )
            return None
        saved = load_run_config(self.file(CONFIG_FILE))
        candidate = dataclasses.replace(
            config, model=dataclasses.replace(config.model, vocabulary_size=saved.model.vocabulary_size)
        )
        differences = config_differences(saved, candidate)
        if differences:
            raise InvalidInputError(
                f"{self.display} holds a run with other settings ({'; '.join(differences)}); "
                "use a new --work_dir, or delete this one to start over"
            )
        if not os.path.isfile(os.path.join(self.file(TOKENIZER_DIR), "tokenizer.json")):
            raise InvalidInputError(
                f"{self.display} has a {CONFIG_FILE} but its {TOKENIZER_DIR}/ is missing or incomplete; its checkpoints "
                f"only make sense with that tokenizer, so put {TOKENIZER_DIR}/ back (or delete the work directory to start over)"
            )
        return saved

    # === Creating a run ===

    def staging_dir(self):
        """A fresh private directory for a new run's files (see commit)."""
        path = self.file(f"{_STAGING_PREFIX}{os.getpid()}")
        shutil.rmtree(path, ignore_errors=True)
        try:
            os.mkdir(path)
        except OSError as error:
            raise InvalidInputError(f"{self.display}: cannot write in it ({error.strerror}); pick a directory you can write to") from None
        return path

    def commit(self, staging):
        """Moves a staged run into place: everything else first, config.json last."""
        names = sorted(os.listdir(staging), key=lambda name: name == CONFIG_FILE)
        for name in names:
            os.replace(os.path.join(staging, name), self.file(name))
        os.rmdir(staging)
