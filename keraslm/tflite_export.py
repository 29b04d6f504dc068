"""Writes a trained classifier or language model as a LiteRT (TFLite) model for edge devices.

<export_dir>/<version>/ holds
  model.tflite   signature serving_default, token ids in (int32 [B, sequence_length], [PAD] = 0
                 on the right): a classifier returns scores (float32 [B, num_classes], softmax
                 in labels.txt order), a language model logits (float32 [B, sequence_length,
                 vocabulary_size]; row t predicts token t + 1).
  tokenizer/     the run's tokenizer (tokenizer.json and vocabulary.txt or sentencepiece.model).
  labels.txt     classifiers: one label name a line, in score order.
  config.json    the run's settings, the export settings and "tflite": the interface above.

The tokenizer is not inside model.tflite: keraslm's tokenizers are built from ops that LiteRT
has no kernel for (regex splitting and replacing, ICU lowercasing, Unicode decoding, a text-file
hash table, the non-"Fast" WordPiece and SentencePiece ops), and TF 2.21's Python interpreter has
no Flex delegate to run them as Select TF ops. A device tokenizes with the shipped vocabulary;
keraslm.tflite_runtime does it with the training code's own tokenizer, so ids match exactly.

The decoding loop is not exported either: the model is one forward pass, and the caller samples
(see the README's "LiteRT (TFLite) for edge devices").
"""

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keraslm.config import write_json_atomic
from keraslm.errors import InvalidInputError
from keraslm.export_versions import CONFIG_ASSET, TFLITE_FILE, export_settings, publish_version
from keraslm.tasks import get_task
from keraslm.tasks.export_module import tf_variable
from keraslm.tokenizers import PAD_ID, truncate

TOKENIZER_DIR = "tokenizer"
LABELS_FILE = "labels.txt"
SIGNATURE = "serving_default"
# Ops that only move data between the int8 and float worlds, or index: not "run in float".
_INTERFACE_OPS = {"QUANTIZE", "DEQUANTIZE", "GATHER", "CAST", "SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE", "NOT_EQUAL"}


def check_tflite_task(task, work_dir):
    """Refuses the tasks that have no LiteRT export, naming what works (before a slow restore)."""
    if task in ("classify", "lm"):
        return
    what, why = {
        "seq2seq": ("a translation model", "its beam search over an encoder-decoder does not convert"),
        "mlm": ("a masked-LM pretraining run", "it is a backbone to fine-tune, not a model to run"),
    }.get(task, (f"a --task={task} run", "keraslm has no LiteRT export for it"))
    raise InvalidInputError(
        f"--format=tflite: --work_dir={work_dir} holds {what}, which has no LiteRT export ({why}); "
        "--format=tflite works for --task=classify and --task=lm"
    )


def export_tflite(
    model, tokenizer, tokenizer_dir, run_config, export_dir, export_config, work_dir, verbose=True, source=None
):
    """Converts the restored model, writes <export_dir>/<next version>/ and returns its path.

    tokenizer_dir: the run's tokenizer directory, copied beside model.tflite.
    """
    check_tflite_task(run_config.task, work_dir)
    export_config.validate()
    sequence_length = run_config.model.sequence_length
    _unroll_lstms(model)
    representative = None
    if export_config.quantize == "full_integer":
        # Read before anything is written: a missing training file is the user's to fix.
        representative = representative_ids(run_config, tokenizer, export_config.representative_examples)

    def write(staging):
        version = os.path.join(staging, "version")
        os.makedirs(version)
        flatbuffer, float_ops = _convert(
            model, run_config.task, sequence_length, export_config.quantize, representative, staging
        )
        with open(os.path.join(version, TFLITE_FILE), "wb") as file:
            file.write(flatbuffer)
        shutil.copytree(tokenizer_dir, os.path.join(version, TOKENIZER_DIR))
        if run_config.task == "classify":
            with open(os.path.join(version, LABELS_FILE), "w", encoding="utf-8") as file:
                file.writelines(f"{label}\n" for label in run_config.labels)
        interface = _interface(run_config, export_config, float_ops)
        settings = {**run_config.to_dict(), **export_settings(run_config, export_config), "tflite": interface}
        write_json_atomic(os.path.join(version, CONFIG_ASSET), {**settings, "source": source} if source else settings)
        return version

    version_dir = publish_version(export_dir, write)
    if verbose:
        size = os.path.getsize(os.path.join(version_dir, TFLITE_FILE))
        print(f"keraslm: exported {os.path.join(version_dir, TFLITE_FILE)} ({size / 1e6:.2f} MB)", flush=True)
    return version_dir


def _unroll_lstms(model):
    """Makes every LSTM unroll over the fixed sequence_length.

    Keras 3's LSTM loops with a TensorList whose element shape holds the batch size; with a
    dynamic batch the converter fails ("'tf.TensorListReserve' op requires element_shape to be
    static during TF Lite transformation pass"), and with a fixed batch it bakes that size into
    RESHAPEs, so no other batch runs. Unrolled over a fixed length it is plain builtin ops that
    take any batch (and quantize fully). The layers are read at trace time: setting the attribute
    on the restored model is enough, and the weights are unchanged.
    """
    for layer in model._flatten_layers():  # pylint: disable=protected-access
        if isinstance(layer, keras.layers.LSTM):
            layer.unroll = True
            if layer.go_backwards:
                # Keras 3.15's unrolled loop zeroes a backward layer's outputs with the mask in
                # forward order while the outputs are in reversed order, so real tokens' states
                # became zeros and padding's did not (a short SST-2-like phrase padded to 10 moved
                # its scores by 0.14). Without the zeroing, the [PAD] steps, which come first in
                # reversed order, output the initial zeros anyway: the rolled loop's result.
                layer.zero_output_for_mask = False


def _convert(model, task, sequence_length, quantize, representative, scratch):
    """(flatbuffer bytes, names of the ops that run in float although full-integer was asked)."""
    module = tf.Module()
    module.model_variables = [tf_variable(variable) for variable in model.variables]

    def forward(token_ids):
        logits = tf.cast(model(token_ids, training=False), tf.float32)
        if task == "classify":
            return {"scores": tf.nn.softmax(logits, axis=-1)}  # (B, num_classes)
        return {"logits": logits}  # (B, T, vocabulary_size)

    spec = tf.TensorSpec([None, sequence_length], tf.int32, name="token_ids")
    module.forward = tf.function(forward, input_signature=[spec], autograph=False)
    # Through a SavedModel, not from_concrete_functions: converting the function directly kept
    # the Transformer's weights as uninitialized resource variables (READ_VARIABLE failed, or
    # NaN scores); from a SavedModel they are frozen into constants.
    saved_model_dir = tempfile.mkdtemp(dir=scratch)
    tf.saved_model.save(module, saved_model_dir, signatures={SIGNATURE: module.forward.get_concrete_function()})
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    # Builtin ops only: TF 2.21's Python interpreter (and a plain LiteRT runtime) has no Flex ops.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize in ("dynamic_range", "full_integer"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "full_integer":
        # int8 weights and activations where an op has an int8 kernel, float elsewhere (the
        # TFLITE_BUILTINS set allows that fallback; TFLITE_BUILTINS_INT8 would refuse instead).
        # Input ids stay int32 and outputs float32, so every variant has one interface.
        converter.representative_dataset = lambda: ({"token_ids": row[None]} for row in representative)
    try:
        flatbuffer = converter.convert()
    finally:
        shutil.rmtree(saved_model_dir, ignore_errors=True)
    return flatbuffer, (float_ops(flatbuffer) if quantize == "full_integer" else [])


def float_ops(flatbuffer):
    """Sorted names of the ops of a converted model that compute in float32."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's copy, deprecated in favour of ai-edge-litert.
        Interpreter = tf.lite.Interpreter  # noqa: N806
    interpreter = Interpreter(model_content=flatbuffer)
    tensors = {detail["index"]: detail["dtype"] for detail in interpreter.get_tensor_details()}
    names = set()
    for op in interpreter._get_ops_details():  # pylint: disable=protected-access
        if op["op_name"] in _INTERFACE_OPS:
            continue
        if any(tensors.get(index) == np.float32 for index in list(op["inputs"]) + list(op["outputs"]) if index >= 0):
            names.add(op["op_name"])
    return sorted(names)


def representative_ids(run_config, tokenizer, count):
    """`count` int32 rows [sequence_length] of the run's training data, tokenized as training did.

    Classifiers: texts spread evenly over the training table (keraslm.tables, the held-out part
    left out as training did). Language models: windows spread evenly over the first 4 million
    characters of the training corpus (keraslm.corpus).
    """
    train = run_config.train
    length = run_config.model.sequence_length
    try:
        if run_config.task == "classify":
            texts = get_task("classify").read(run_config).train.texts
            picked = [texts[int(i)] for i in np.linspace(0, len(texts) - 1, min(count, len(texts)))]
            ids = truncate(tokenizer.tokenize(tf.constant(picked), keep_whitespace=False), length, run_config.model.truncation)
            return ids.to_tensor(default_value=PAD_ID, shape=[None, length]).numpy().astype(np.int32)
        from keraslm import corpus as corpus_lib

        corpus = corpus_lib.open_corpus(train.train_data, "--train_data", train.text_column)
        text = "".join(corpus.text(0, 4_000_000))
    except FileNotFoundError as error:
        raise InvalidInputError(
            f"--quantize=full_integer calibrates on the run's training data, and --train_data={train.train_data} "
            f"(from the work directory's config.json) cannot be read here: {error}; run the export where that path "
            "exists, or use --quantize=dynamic_range"
        ) from None
    tokens = tokenizer.tokenize(tf.constant([text])).flat_values.numpy().astype(np.int32)
    windows = max(1, len(tokens) - length)
    starts = np.linspace(0, windows - 1, min(count, windows)).astype(np.int64)
    rows = np.zeros([len(starts), length], np.int32)
    for row, start in zip(rows, starts):
        window = tokens[start : start + length]
        row[: len(window)] = window
    return rows


def _interface(run_config, export_config, float_ops_list):
    """config.json's "tflite": what a device needs to call model.tflite."""
    model = run_config.model
    interface = {
        "file": TFLITE_FILE,
        "signature": SIGNATURE,
        "input": {"name": "token_ids", "dtype": "int32", "shape": [-1, model.sequence_length], "pad_id": PAD_ID},
        "tokenizer": TOKENIZER_DIR,
        "quantize": export_config.quantize,
    }
    if run_config.task == "classify":
        interface["output"] = {"name": "scores", "dtype": "float32", "shape": [-1, len(run_config.labels)]}
        interface["labels"] = LABELS_FILE
        interface["truncation"] = model.truncation
    else:
        interface["output"] = {"name": "logits", "dtype": "float32", "shape": [-1, model.sequence_length, model.vocabulary_size]}
    if export_config.quantize == "full_integer":
        interface["float_ops"] = float_ops_list
    return interface
