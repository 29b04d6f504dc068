"""The served models: which versions are loaded, loading new ones, retiring old ones.

Each model's base path holds numbered version directories (TF Serving layout). A watcher thread
looks at every base path each --file_system_poll_wait_seconds; a version the policy wants is
loaded in that thread while the current one keeps serving, then swapped in under a lock, so a
request sees the old version or the new one, never neither. A retired version is closed once its
last in-flight request is done. A version directory counts only once saved_model.pb and
variables/variables.index are there and it loads; one that fails to load is retried when its
files change, and the version before it keeps serving meanwhile.
"""

import dataclasses
import gc
import os
import sys
import threading
import time

from keraslm.serving.metrics import BatchSizeStats
from keraslm.serving.servable import Servable

_INT64_MAX = 2**63 - 1


class NotFoundError(LookupError):
    """An unknown model, version or label (HTTP 404, gRPC NOT_FOUND)."""


def log(message):
    print(f"keraslm-serve: {message}", file=sys.stderr, flush=True)


def _fingerprint(version_dir):
    """What changes when a version directory's files do: (name, size, mtime) of the files that matter."""
    paths = [os.path.join(version_dir, "saved_model.pb")]
    variables = os.path.join(version_dir, "variables")
    if os.path.isdir(variables):
        paths += [os.path.join(variables, name) for name in sorted(os.listdir(variables))]
    result = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        result.append((path, stat.st_size, stat.st_mtime_ns))
    return tuple(result)


def _complete(version_dir):
    return os.path.isfile(os.path.join(version_dir, "saved_model.pb")) and os.path.isfile(
        os.path.join(version_dir, "variables", "variables.index")
    )


def _freeze_heap():
    """Moves every object alive now out of the garbage collector's sight (gc.freeze).

    TensorFlow and the loaded graphs leave ~300,000 tracked Python objects that live as long as
    the version; each full collection walked them all and stopped the server for 100-200 ms under
    load, adding that to whole batches of requests (p99 2-3x its no-GC value; BENCHMARKS.md,
    "Serving"). Called after each load and unload, so a retired version's objects are unfrozen
    and collected once, at reload time, not during requests.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class _Model:
    def __init__(self, spec):
        self.spec = spec
        self.loaded = {}  # version -> Servable
        self.failed = {}  # version -> (fingerprint, error message)


class ModelManager:
    """Every served model's loaded versions, kept up to date by a watcher thread."""

    def __init__(self, specs, batching=None, poll_seconds=1.0, config_reader=None, config_poll_seconds=0,
                 allow_unavailable_labels=False):
        self._models = {spec.name: _Model(spec) for spec in specs}
        # --model_config_file re-read every config_poll_seconds (0: never), by config_reader().
        self._config_reader, self._config_poll_seconds = config_reader, config_poll_seconds
        self._allow_unavailable_labels = allow_unavailable_labels
        self._rejected_specs = None
        self._last_config_error = None  # the last re-read's error, said once
        self._last_watch_error = None
        self._batching = batching
        self.batch_sizes = BatchSizeStats()
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    # === Loading ===

    def load_initial(self):
        """Loads what each model's policy wants now; raises ValueError if a model has nothing to serve."""
        self.poll()
        for name, model in self._models.items():
            if not model.loaded:
                failures = "; ".join(f"version {version}: {error}" for version, (_, error) in sorted(model.failed.items()))
                available = sorted(self._available_versions(model))
                if failures:
                    reason = f" ({failures})"
                elif model.spec.policy == "specific" and available:
                    reason = (
                        f" (model_version_policy asks for version {', '.join(map(str, model.spec.versions))}; "
                        f"the complete versions there are {', '.join(map(str, available))})"
                    )
                else:
                    reason = " (no complete numbered version directory: one with saved_model.pb and variables/)"
                raise ValueError(f"model {name!r}: no version could be loaded from {model.spec.base_path}{reason}")
        self.check_labels()

    def check_labels(self, models=None):
        """Without --allow_version_labels_for_unavailable_models, as in TF Serving, a version label
        may only name a version that is loaded. Raises ValueError naming the label."""
        if self._allow_unavailable_labels:
            return
        for name, model in (models or self._models).items():
            for label, version in model.spec.labels:
                if version not in model.loaded:
                    raise ValueError(
                        f"model {name!r}: version label {label!r} names version {version}, which is not loaded; "
                        "point it at a loaded version or pass --allow_version_labels_for_unavailable_models"
                    )

    def start_watching(self):
        if self._poll_seconds > 0 or (self._config_reader and self._config_poll_seconds > 0):
            self._thread = threading.Thread(target=self._watch, name="version-watcher", daemon=True)
            self._thread.start()

    def _watch(self):
        # One thread does both jobs, so loads never race each other.
        periods = [period for period in (self._poll_seconds, self._config_poll_seconds if self._config_reader else 0) if period > 0]
        tick = min(periods)
        next_poll = next_config = time.monotonic()
        while not self._stop.wait(tick):
            now = time.monotonic()
            if self._config_reader and self._config_poll_seconds > 0 and now - next_config >= self._config_poll_seconds:
                next_config = now
                self._guarded(self._reload_config, "applying the model config file")
            if self._poll_seconds > 0 and now - next_poll >= self._poll_seconds:
                next_poll = now
                self._guarded(self.poll, "looking for new versions")

    def _guarded(self, work, what):
        """Runs one of the watcher's jobs; an error is logged once (not every tick) and the watcher goes on."""
        try:
            work()
        except Exception as error:  # noqa: BLE001  The watcher must outlive a bad poll.
            message = f"error while {what}: {' '.join(str(error).split())}"
            if message != self._last_watch_error:
                log(message)
            self._last_watch_error = message
        else:
            self._last_watch_error = None

    def _reload_config(self):
        """Applies a changed --model_config_file: new models load, removed ones unload, policies and
        labels change. A file that does not parse, or labels that name unloaded versions, leave
        the running configuration as it was, with one log line."""
        try:
            specs = {spec.name: spec for spec in self._config_reader()}
        except Exception as error:  # noqa: BLE001  Keep serving what is served.
            message = " ".join(str(error).split())
            if message != self._last_config_error:
                log(f"the model config file was not applied: {message}")
            self._last_config_error = message
            return
        recovered = self._last_config_error is not None
        self._last_config_error = None
        if specs == {name: model.spec for name, model in self._models.items()} or specs == self._rejected_specs:
            if recovered:
                log("the model config file parses again and matches what is served")
            return
        old_specs = {name: model.spec for name, model in self._models.items()}
        models = dict(self._models)
        for name in list(models):
            if name not in specs:
                model = models.pop(name)
                with self._lock:
                    servables = list(model.loaded.values())
                    model.loaded.clear()
                for servable in servables:
                    servable.retire()
                log(f"model {name!r} is no longer in the config file: unloaded")
        for name, spec in specs.items():
            if name in models:
                # Labels wait until the policy's versions are loaded.
                models[name].spec = dataclasses.replace(spec, labels=models[name].spec.labels)
            else:
                models[name] = _Model(dataclasses.replace(spec, labels=()))
        self._models = models
        self.poll()
        for name, spec in specs.items():
            models[name].spec = spec
        try:
            self.check_labels(models)
        except ValueError as error:
            for name, model in models.items():
                if name in old_specs:
                    model.spec = dataclasses.replace(model.spec, labels=old_specs[name].labels)
                else:
                    model.spec = dataclasses.replace(model.spec, labels=())
            log(f"the model config file's version labels were not applied: {error}")
            self._rejected_specs = specs  # Said once; tried again when the file changes.
            return
        self._rejected_specs = None
        log(f"applied the model config file: serving {', '.join(sorted(specs))}")

    def _available_versions(self, model):
        try:
            names = os.listdir(model.spec.base_path)
        except OSError:
            return {}
        versions = {}
        for name in names:
            # TF Serving's versions are int64; a longer number is not a version.
            if name.isdigit() and int(name) <= _INT64_MAX and _complete(os.path.join(model.spec.base_path, name)):
                versions[int(name)] = os.path.join(model.spec.base_path, name)
        return versions

    def _wanted(self, model, available):
        """The versions the policy asks for among those that are complete and not known to fail."""
        usable = sorted(
            (version for version, path in available.items()
             if version in model.loaded or model.failed.get(version, (None,))[0] != _fingerprint(path)),
            reverse=True,
        )
        spec = model.spec
        if spec.policy == "all":
            return set(usable)
        if spec.policy == "specific":
            return set(usable) & set(spec.versions)
        return set(usable[: spec.num_versions])

    def poll(self):
        """One look at every base path: loads wanted versions, retires unwanted ones."""
        for name, model in list(self._models.items()):
            available = self._available_versions(model)
            for version in [version for version in model.failed if version not in available]:
                del model.failed[version]  # Its directory is gone: nothing to report any more.
            while True:
                wanted = self._wanted(model, available)
                to_load = sorted(wanted - set(model.loaded), reverse=True)
                if not to_load:
                    break
                version = to_load[0]
                path = available[version]
                fingerprint = _fingerprint(path)
                started = time.monotonic()
                try:
                    servable = Servable(name, version, path, self._batching, self.batch_sizes)
                except Exception as error:  # noqa: BLE001  A bad version must not stop the server.
                    message = " ".join(str(error).split()) or type(error).__name__
                    if model.failed.get(version, (None,))[0] != fingerprint:
                        log(f"model {name!r} version {version} ({path}) did not load: {message}; will retry when its files change")
                    model.failed[version] = (fingerprint, message)
                    continue  # _wanted now skips it: the next version down may take its place.
                if _fingerprint(path) != fingerprint:
                    # Still being written (a copy, not keraslm-export's atomic rename): next poll.
                    servable.retire()
                    break
                model.failed.pop(version, None)
                with self._lock:
                    model.loaded[version] = servable
                _freeze_heap()
                warmed = f", {servable.warmup_requests} warm-up requests" if servable.warmup_requests else ""
                log(f"model {name!r} version {version} is available ({path}, loaded in {time.monotonic() - started:.1f} s{warmed})")
            wanted = self._wanted(model, available)
            for version in sorted(set(model.loaded) - wanted):
                if version in available and len(model.loaded) == 1:
                    continue
                with self._lock:
                    servable = model.loaded.pop(version)
                servable.retire()
                log(f"model {name!r} version {version} is unloaded")
                _freeze_heap()

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for model in self._models.values():
            with self._lock:
                servables = list(model.loaded.values())
                model.loaded.clear()
            for servable in servables:
                servable.retire()

    # === Lookup ===

    @property
    def names(self):
        return sorted(self._models)

    def _model(self, name):
        model = self._models.get(name)
        if model is None:
            raise NotFoundError(f"Servable not found for request: model {name!r} is not served (served: {', '.join(self.names)})")
        return model

    def _model_and_version(self, name, version, label):
        """(the model, the version asked for: by number, by label, or None for the newest)."""
        model = self._model(name)
        if label is not None:
            labels = dict(model.spec.labels)
            if label not in labels:
                raise NotFoundError(f"model {name!r} has no version label {label!r}")
            version = labels[label]
        return model, version

    def acquire(self, name, version=None, label=None):
        """The Servable for a request, with its in-flight count raised; call .release() after."""
        model, version = self._model_and_version(name, version, label)
        with self._lock:
            if version is None:
                if not model.loaded:
                    raise NotFoundError(f"model {name!r} has no version loaded")
                servable = model.loaded[max(model.loaded)]
            else:
                servable = model.loaded.get(version)
                if servable is None:
                    served = ", ".join(map(str, sorted(model.loaded))) or "none"
                    raise NotFoundError(f"model {name!r} version {version} is not served (served versions: {served})")
            servable.acquire()
        return servable

    def status(self, name, version=None, label=None):
        """[(version, state, error message)] as TF Serving's GetModelStatus reports it."""
        model, version = self._model_and_version(name, version, label)
        with self._lock:
            states = {v: ("AVAILABLE", "") for v in model.loaded}
        for failed_version, (_, message) in model.failed.items():
            states.setdefault(failed_version, ("END", message))
        if version is not None:
            if version not in states:
                raise NotFoundError(f"model {name!r} version {version} is not served")
            states = {version: states[version]}
        if not states:
            raise NotFoundError(f"model {name!r} has no version (its base path {model.spec.base_path} holds none)")
        return [(v, state, message) for v, (state, message) in sorted(states.items(), reverse=True)]

    def listing(self):
        """What the playground shows: each model's newest loaded version, task and signatures."""
        result = []
        for name in self.names:
            model = self._models[name]
            with self._lock:
                servable = model.loaded[max(model.loaded)] if model.loaded else None
            if servable is None:
                continue
            info = servable.info or {"task": None, "labels": None, "defaults": None}
            result.append(
                {"name": name, "version": str(servable.version), "signatures": sorted(servable.signature_defs), **info}
            )
        return result
