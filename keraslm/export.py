"""Writes a trained model and its tokenizer as a SavedModel in TF Serving layout.

<export_dir>/<version>/ holds saved_model.pb, the weights, and as assets the tokenizer vocabulary
and config.json (the run's settings, its task and label names, and the export settings). Loading
it needs TensorFlow and tensorflow-text only. The signatures are the task's: see
keraslm.tasks.lm_export (serving_default, generate, score) and keraslm.tasks.classifier_export
(serving_default: text -> label, label_id, scores).
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import tensorflow as tf

from keraslm.config import ExportConfig, load_run_config, write_json_atomic
from keraslm.errors import InvalidInputError
from keraslm.files import is_disk_full, pid_alive
from keraslm.tasks import get_task
from keraslm.tasks.mlm import not_exportable
from keraslm.tasks.seq2seq_export import export_settings as seq2seq_export_settings
from keraslm.training import load_trained_model

CONFIG_ASSET = "config.json"
# TF Serving's warm-up file: PredictionLog records it replays when it loads a version.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


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


def export_model(model, tokenizer, run_config, export_dir, export_config=None, verbose=True, source=None):
    """Writes <export_dir>/<next version>/ and returns its path.

    The version directory appears complete or not at all: it is written under a temporary name
    that TF Serving ignores and renamed at the end.
    """
    export_config = export_config or ExportConfig()
    export_config.validate()
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise InvalidInputError(f"--export_dir={export_dir} is a file, not a directory; pick another --export_dir")
    os.makedirs(export_dir, exist_ok=True)
    _remove_dead_staging(export_dir)
    # The PID in the name lets a later export tell a dead export's leftovers from a live one's.
    staging = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=export_dir)
    try:
        config_path = os.path.join(staging, "source", CONFIG_ASSET)
        os.makedirs(os.path.dirname(config_path))
        # "source" names the checkpoint exported, so a re-run can tell an export is up to date.
        asset = {**run_config.to_dict(), **_export_settings(run_config, export_config)}
        write_json_atomic(config_path, {**asset, "source": source} if source else asset)
        server = get_task(run_config.task).export_module(model, tokenizer, run_config, export_config, config_path)
        saved_model_dir = os.path.join(staging, "saved_model")
        tf.saved_model.save(server, saved_model_dir, signatures=server.signatures())
        _write_warmup_requests(server.warmup_requests(), os.path.join(saved_model_dir, WARMUP_FILE))
        while True:
            version_dir = os.path.join(export_dir, str(next_version(export_dir)))
            try:
                os.rename(saved_model_dir, version_dir)
                break
            except OSError:
                if not os.path.exists(version_dir):
                    raise
                # Another export took this number meanwhile: take the next one.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if verbose:
        print(f"keraslm: exported {version_dir}", flush=True)
    return version_dir


def _write_warmup_requests(requests, path):
    """assets.extra/tf_serving_warmup_requests: a TFRecord of PredictionLog protos, as TF Serving
    reads it (tensorflow_serving/g3doc/saved_model_warmup.md)."""
    if not requests:
        return
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature_name
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _checkpoint_source(work_dir, checkpoint):
    """What identifies the weights of an export: the run, the checkpoint and its index file's hash."""
    with open(f"{checkpoint}.index", "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()
    return {"work_dir": os.path.realpath(work_dir), "checkpoint": os.path.basename(checkpoint), "index_sha256": digest}


def _export_settings(run_config, export_config):
    """{"export": the decoding defaults} for a language or translation model; nothing for other
    tasks, which have no such settings."""
    if run_config.task == "seq2seq":
        return {"export": seq2seq_export_settings(run_config, export_config)}
    return {"export": dataclasses.asdict(export_config)} if run_config.task == "lm" else {}


def _newest_export_of(export_dir, source, settings):
    """The newest complete version in export_dir if it holds exactly this checkpoint and settings."""
    if not os.path.isdir(export_dir):
        return None
    versions = sorted((int(name) for name in os.listdir(export_dir) if name.isdigit()), reverse=True)
    for version in versions:
        version_dir = os.path.join(export_dir, str(version))
        try:
            with open(os.path.join(version_dir, "assets", CONFIG_ASSET), encoding="utf-8") as file:
                exported = json.load(file)
        except (OSError, ValueError):
            continue  # Incomplete or foreign: not the newest complete keraslm export.
        if not os.path.isfile(os.path.join(version_dir, "saved_model.pb")):
            continue
        same = exported.get("source") == source and exported.get("export") == settings.get("export")
        return version_dir if same else None
    return None


def export_from_work_dir(work_dir, export_dir, export_config=None, verbose=True, only_if_changed=False):
    """Exports the latest readable checkpoint of a training work directory; returns the version dir.

    only_if_changed: when the newest version in export_dir already holds this checkpoint with the
    same export settings, say so and return it instead of writing an identical new version.
    """
    export_config = export_config or ExportConfig()
    config_path = os.path.join(work_dir, CONFIG_ASSET)
    if os.path.isfile(config_path) and not get_task(load_run_config(config_path).task).exportable:
        raise not_exportable(work_dir)
    run_config, model, tokenizer, checkpoint = load_trained_model(work_dir, use_cudnn=False)
    source = _checkpoint_source(work_dir, checkpoint)
    if only_if_changed:
        existing = _newest_export_of(export_dir, source, _export_settings(run_config, export_config))
        if existing:
            if verbose:
                print(f"keraslm: {existing} already holds {source['checkpoint']} of this run; not exporting it again", flush=True)
            return existing
    try:
        return export_model(model, tokenizer, run_config, export_dir, export_config, verbose, source=source)
    except (OSError, tf.errors.OpError) as error:
        if is_disk_full(error):
            reason = "no space left on device"
        elif isinstance(error, PermissionError) or "Permission denied" in str(error):
            reason = "permission denied"
        else:
            raise
        raise InvalidInputError(
            f"{reason} while exporting to --export_dir={export_dir}; nothing new was written there "
            "(earlier versions and the work directory are untouched). Fix that and export again"
        ) from None
