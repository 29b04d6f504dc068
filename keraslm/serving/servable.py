"""One loaded version of a model: its graph Session, signatures, warm-up and batchers.

A version is loaded with keraslm.saved_model_session (the graph in a TF1-style Session, as TF
Serving runs it), warmed up with TF Serving's assets.extra/tf_serving_warmup_requests when the
export carries one, and closed once it is retired and its last in-flight request is done.
"""

import json
import os
import threading

from tensorflow.python.lib.io import tf_record
from tensorflow.python.util import deprecation
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from keraslm.inference import CONFIG_ASSET, assertion_message
from keraslm.saved_model_session import SavedModelSession
from keraslm.serving.batching import Batcher
from keraslm.serving.tensors import RequestError, from_tensor_proto, input_specs

DEFAULT_SIGNATURE = "serving_default"  # what a request without signature_name runs, as in TF Serving
# TF Serving's warm-up requests (keraslm-export writes them) and its cap on their number.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


def _keraslm_info(version_dir):
    """The export's task, labels and decoding defaults from assets/config.json; None for others."""
    try:
        with open(os.path.join(version_dir, "assets", CONFIG_ASSET), encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    task = config.get("task", "lm")
    export = config.get("export") or {}
    return {
        "task": task,
        "labels": config.get("labels") if task == "classify" else None,
        "defaults": {key: export.get(key) for key in ("max_new_tokens", "temperature", "max_new_tokens_limit")}
        if task == "lm"
        else None,
    }


class Servable:
    """One loaded version: its Session, signatures and (with batching) one Batcher per signature."""

    def __init__(self, name, version, path, batching, stats):
        self.name, self.version, self.path = name, version, path
        self.session = SavedModelSession(path)
        if not self.session.usable:
            self.session.close()
            raise ValueError(
                "its functions read weights its checkpoint does not restore (an export of keraslm before "
                "keras-team/keras#20095 was worked around); export it again with keraslm-export"
            )
        self.signature_defs = self.session.signature_defs
        self.specs = {name: input_specs(signature) for name, signature in self.signature_defs.items()}
        self.info = _keraslm_info(path)
        self._batching, self._stats = batching, stats
        self._batchers = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False
        self._closed = False
        try:
            self.warmup_requests = self._warm_up()
        except Exception:
            self.session.close()
            raise

    def _warm_up(self):
        """Replays assets.extra/tf_serving_warmup_requests, as TF Serving does before a version
        serves: each function's first call prepares its graph (seconds for a language model's
        decoding loop), here rather than in a client's first request. Returns the count."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.isfile(path):
            return 0
        count = 0
        # tf_record_iterator is deprecated for tf.data, which would need eager TF: it still works.
        with deprecation.silence():
            records = list(tf_record.tf_record_iterator(path))
        for record in records:
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise ValueError(f"{WARMUP_FILE} has over {MAX_WARMUP_RECORDS} records, TF Serving's limit")
            log = prediction_log_pb2.PredictionLog.FromString(record)
            if log.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{WARMUP_FILE}: record {count} is a {log.WhichOneof('log_type')}; only predict_log is replayed")
            request = log.predict_log.request
            try:
                name, specs = self.signature(request.model_spec.signature_name)
            except RequestError as error:
                raise ValueError(f"{WARMUP_FILE}: record {count}: {error}") from None
            inputs = {key: from_tensor_proto(proto, key, specs[key]) for key, proto in request.inputs.items()}
            self.call(name, inputs)
        return count

    def acquire(self):
        with self._lock:
            if self._closed:
                return False
            self._in_flight += 1
            return True

    def release(self):
        with self._lock:
            self._in_flight -= 1
            close = self._retired and self._in_flight == 0
        if close:
            self._close()

    def retire(self):
        """No new requests will come: close when the in-flight ones are done."""
        with self._lock:
            self._retired = True
            close = self._in_flight == 0
        if close:
            self._close()

    def _close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for batcher in self._batchers.values():
            batcher.close()
        self.session.close()

    def signature(self, signature_name):
        """(the signature's name, its input specs) for a request's signature_name: absent or ""
        is serving_default, as in TF Serving; an unknown one is a RequestError naming those there are."""
        signature_name = signature_name or DEFAULT_SIGNATURE
        if signature_name not in self.specs:
            raise RequestError(
                f"Serving signature name: \"{signature_name}\" not found in signature def; this model's signatures "
                f"are {', '.join(sorted(self.specs))}"
            )
        return signature_name, self.specs[signature_name]

    def signature_def_map(self):
        """The SignatureDefMap that GetModelMetadata (gRPC) and /metadata (REST) report."""
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in self.signature_defs.items():
            signatures.signature_def[key].CopyFrom(signature)
        return signatures

    @property
    def batching(self):
        return self._batching is not None

    def call(self, signature_name, inputs):
        """Runs a signature on this request alone: {output: array}."""
        return self.session.signature(signature_name)(**inputs)

    def submit(self, signature_name, inputs, rows):
        """Queues a request for its signature's batcher: a concurrent.futures.Future of {output: array}."""
        with self._lock:
            batcher = self._batchers.get(signature_name)
            if batcher is None:
                function = self.session.signature(signature_name)
                batcher = self._batchers[signature_name] = Batcher(
                    lambda values: function(**values), self._batching, self._stats,
                    f"{self.name}-{self.version}-{signature_name}", model=self.name,
                )
        return batcher.submit(inputs, rows)


def model_error_message(error):
    """(HTTP status, message) for an error raised while running a signature."""
    # tf.errors.InvalidArgumentError from the graph's own checks (tf.debugging.Assert): the
    # client's values are out of range, e.g. max_new_tokens over the export's limit.
    kind = type(error).__name__
    message = getattr(error, "message", None) or str(error)
    if kind == "InvalidArgumentError":
        return 400, assertion_message(message)
    if isinstance(error, ValueError):
        return 400, str(error)
    return 500, f"{kind}: {' '.join(message.split())[:2000]}"
