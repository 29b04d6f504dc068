"""Writes a trained model and its tokenizer as a SavedModel in TF Serving layout (or, with
--format=tflite, as a LiteRT model: keraslm.tflite_export); --quantize=int8 stores int8 weights
(keraslm.quantization). Version numbering and staging: keraslm.export_versions.

<export_dir>/<version>/ holds saved_model.pb, the weights, and as assets the tokenizer vocabulary
and config.json (the run's settings, its task and label names, and the export settings). Loading
it needs TensorFlow and tensorflow-text only. The signatures are the task's: see
keraslm.tasks.lm_export (serving_default, generate, score) and keraslm.tasks.classifier_export
(serving_default: text -> label, label_id, scores).
"""

import hashlib
import json
import os

import tensorflow as tf

from keraslm.config import ExportConfig, load_run_config, write_json_atomic
from keraslm.errors import InvalidInputError
from keraslm.export_versions import CONFIG_ASSET, TFLITE_FILE, export_settings, next_version, publish_version  # noqa: F401
from keraslm.files import is_disk_full
from keraslm.quantization import forward_only, quantize_model
from keraslm.tasks import get_task
from keraslm.tasks.mlm import not_exportable
from keraslm.tflite_export import check_tflite_task, export_tflite
from keraslm.training import load_trained_model
from keraslm.work_dir import TOKENIZER_DIR

# TF Serving's warm-up file: PredictionLog records it replays when it loads a version.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def export_model(model, tokenizer, run_config, export_dir, export_config=None, verbose=True, source=None):
    """Writes the SavedModel to <export_dir>/<next version>/ (publish_version) and returns its path."""
    export_config = export_config or ExportConfig()
    export_config.validate()

    def write(staging):
        config_path = os.path.join(staging, "source", CONFIG_ASSET)
        os.makedirs(os.path.dirname(config_path))
        # "source" names the checkpoint exported, so a re-run can tell an export is up to date.
        asset = {**run_config.to_dict(), **export_settings(run_config, export_config)}
        write_json_atomic(config_path, {**asset, "source": source} if source else asset)
        server = get_task(run_config.task).export_module(model, tokenizer, run_config, export_config, config_path)
        saved_model_dir = os.path.join(staging, "saved_model")
        # The signatures and functions are traced here: int8 layers without their gradients.
        with forward_only():
            tf.saved_model.save(server, saved_model_dir, signatures=server.signatures())
        _write_warmup_requests(server.warmup_requests(), os.path.join(saved_model_dir, WARMUP_FILE))
        return saved_model_dir

    version_dir = publish_version(export_dir, write)
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


def _newest_export_of(export_dir, source, settings):
    """The newest complete version in export_dir if it holds exactly this checkpoint and settings."""
    if not os.path.isdir(export_dir):
        return None
    versions = sorted((int(name) for name in os.listdir(export_dir) if name.isdigit()), reverse=True)
    for version in versions:
        version_dir = os.path.join(export_dir, str(version))
        # A SavedModel keeps config.json among its assets; a LiteRT export beside model.tflite.
        if os.path.isfile(os.path.join(version_dir, "saved_model.pb")):
            config_file = os.path.join(version_dir, "assets", CONFIG_ASSET)
        elif os.path.isfile(os.path.join(version_dir, TFLITE_FILE)):
            config_file = os.path.join(version_dir, CONFIG_ASSET)
        else:
            continue
        try:
            with open(config_file, encoding="utf-8") as file:
                exported = json.load(file)
        except (OSError, ValueError):
            continue  # Incomplete or foreign: not the newest complete keraslm export.
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
    if export_config.format == "tflite" and os.path.isfile(config_path):
        # Refused before the (slow) restore when the task has no LiteRT export.
        check_tflite_task(load_run_config(config_path).task, work_dir)
    run_config, model, tokenizer, checkpoint = load_trained_model(work_dir, use_cudnn=False)
    source = _checkpoint_source(work_dir, checkpoint)
    if export_config.quantize == "int8":
        # After the restore: quantizing replaces the float weights by int8 ones and their scales.
        quantize_model(model)
    if only_if_changed:
        existing = _newest_export_of(export_dir, source, export_settings(run_config, export_config))
        if existing:
            if verbose:
                print(f"keraslm: {existing} already holds {source['checkpoint']} of this run; not exporting it again", flush=True)
            return existing
    try:
        if export_config.format == "tflite":
            tokenizer_dir = os.path.join(work_dir, TOKENIZER_DIR)
            return export_tflite(
                model, tokenizer, tokenizer_dir, run_config, export_dir, export_config, work_dir, verbose, source=source
            )
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
