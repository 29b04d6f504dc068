"""--task=seq2seq: the encoder-decoder learns, decodes incrementally exactly as it computes in
training, and its SavedModel translates raw strings in a process without keraslm."""

import json

import numpy as np
import pytest

from conftest import TINY_SEQ2SEQ, ServeProcess, reverse_pairs, run_cli, run_fresh_python


def _tiny_config(model, **model_settings):
    from keraslm.config import ModelConfig, RunConfig, TrainConfig

    settings = dict(model=model, vocabulary_size=23, sequence_length=10, hidden_dim=16, num_layers=2, num_heads=2)
    settings.update(model_settings)
    return RunConfig(task="seq2seq", model=ModelConfig(**settings, extra_ids=2), train=TrainConfig(train_data="x"))


@pytest.mark.parametrize("model", ["transformer", "lstm"])
def test_step_by_step_decoding_equals_the_training_forward_pass(model):
    """The export's decoder, one position at a time (key/value cache, or recomputing the prefix;
    the LSTM's carried state), gives the logits of the model's whole-sequence forward pass, with
    padding in the source. A wrong cache index, mask or start position fails here."""
    import keras
    import tensorflow as tf

    from keraslm.tasks import build_model
    from keraslm.tasks.seq2seq_model import Seq2SeqDecoder, start_id

    keras.utils.set_random_seed(3)
    config = _tiny_config(model)
    seq2seq = build_model(config, use_cudnn=False)
    generator = np.random.default_rng(0)
    source = generator.integers(2, 21, size=(3, 7)).astype(np.int32)
    source[0, 4:] = 0  # a padded source
    source[2, 2:] = 0
    target = generator.integers(2, 21, size=(3, 6)).astype(np.int32)
    decoder_ids = np.concatenate([np.full([3, 1], start_id(23), np.int32), target[:, :-1]], axis=1)
    full = seq2seq({"encoder_token_ids": source, "decoder_token_ids": decoder_ids}, training=False).numpy()

    variants = [True, False] if model == "transformer" else [True]
    for kv_cache in variants:
        decoder = Seq2SeqDecoder(seq2seq, config.model, max_length=config.model.sequence_length, kv_cache=kv_cache)
        step = tf.function(decoder.step)
        state = decoder.encode(tf.constant(source))
        for index in range(decoder_ids.shape[1]):
            logits, state = step(state, tf.constant(decoder_ids[:, index]), tf.constant(index))
            np.testing.assert_allclose(logits.numpy(), full[:, index], atol=2e-5, err_msg=f"kv_cache={kv_cache} at {index}")


def test_tiny_model_learns_to_reverse_strings_greedily(seq2seq_run):
    """Greedy translations of strings training never saw are their exact reversals: masking,
    positions and the decoding loop all work, and the training log describes the run."""
    import keraslm

    assert "training and" in seq2seq_run["stdout"] and "validation pairs" in seq2seq_run["stdout"]
    seen = {line.split("\t")[0] for line in seq2seq_run["train_data"].read_text(encoding="utf-8").splitlines()[1:]}
    unseen = [source for source, _ in reverse_pairs(400, seed=1, lengths=(3, 6)) if source not in seen][:40]
    assert len(unseen) >= 30
    translator = keraslm.load(str(seq2seq_run["export_dir"]))
    greedy = translator.translate(unseen, num_beams=1)
    exact = [output == source[::-1] for output, source in zip(greedy, unseen)]
    assert sum(exact) >= 0.95 * len(unseen), list(zip(unseen, greedy))
    # Beam search agrees where the model is sure, and each row's details are consistent.
    details = translator.translate_with_details(unseen[:8], num_beams=4, length_penalty=0.0)
    for source, result in zip(unseen[:8], details):
        assert result.num_tokens == len(result.text) and result.score <= 0.0
    assert sum(result.text == source[::-1] for source, result in zip(unseen[:8], details)) >= 7


def test_export_translates_greedily_as_the_keras_model_does(seq2seq_run):
    """The SavedModel's num_beams=1 output equals a greedy loop over the Keras model's
    whole-sequence forward pass (an independent reference for the in-graph decoder)."""
    import keraslm
    from keraslm.tasks.seq2seq_model import end_id, start_id
    from keraslm.training import load_trained_model

    trained = load_trained_model(str(seq2seq_run["work_dir"]), use_cudnn=False)
    vocabulary_size = trained.config.model.vocabulary_size
    sources = ["fedcba", "aab", "c", "ffffff", "abcdefabcdef"]  # the last is longer than training's
    expected = []
    for source in sources:
        encoder_ids = trained.tokenizer.tokenize([source], keep_whitespace=False).to_tensor().numpy()
        decoder_ids = [start_id(vocabulary_size)]
        for _ in range(8):
            logits = trained.model({"encoder_token_ids": encoder_ids, "decoder_token_ids": np.array([decoder_ids])})
            logits = logits.numpy()[0, -1]
            logits[[0, 1, start_id(vocabulary_size)]] = -np.inf  # never generated: [PAD], [UNK], START
            if len(decoder_ids) == 1:
                logits[end_id(vocabulary_size)] = -np.inf  # nor END first
            token = int(np.argmax(logits))
            if token == end_id(vocabulary_size):
                break
            decoder_ids.append(token)
        expected.append(trained.tokenizer.detokenize(np.array([decoder_ids[1:]], np.int32)).numpy()[0].decode())
    translator = keraslm.load(str(seq2seq_run["export_dir"]))
    assert translator.translate(sources, num_beams=1, max_new_tokens=8) == expected


def test_export_runs_with_only_tensorflow_in_a_fresh_process(seq2seq_run):
    """serving_default and translate from raw strings, with tensorflow and tensorflow_text alone;
    per-row settings; the controls are checked in the graph."""
    code = f"""
import glob, json, os, sys
import tensorflow as tf, tensorflow_text  # noqa: F401
version = sorted(glob.glob(os.path.join({str(seq2seq_run["export_dir"])!r}, "[0-9]*")))[-1]
loaded = tf.saved_model.load(version)
# TensorFlow imports keras itself (its tf.keras alias); keraslm and keras-nlp are never needed.
assert not [name for name in sys.modules if name.startswith(("keraslm", "keras_nlp", "keras_hub"))]
sources = tf.constant(["abcd", "", "eeffa"])
default = loaded.signatures["serving_default"](source=sources)["translation"].numpy()
rows = dict(source=sources, max_new_tokens=tf.constant([8, 3, 8]), temperature=tf.constant([0.0, 0.0, 1.5]),
            num_beams=tf.constant([4, 1, 1]), length_penalty=tf.constant([0.6, 0.0, 0.0]),
            seed=tf.constant([0, 0, 42], tf.int64))
first = loaded.signatures["translate"](**rows)
again = loaded.signatures["translate"](**rows)
try:
    loaded.signatures["translate"](**{{**rows, "num_beams": tf.constant([0, 1, 1])}})
    error = ""
except tf.errors.InvalidArgumentError as caught:
    error = caught.message
print(json.dumps({{"default": [t.decode() for t in default], "translation": [t.decode() for t in first["translation"].numpy()],
                  "again": [t.decode() for t in again["translation"].numpy()],
                  "num_tokens": first["num_tokens"].numpy().tolist(), "score": first["score"].numpy().tolist(),
                  "signatures": sorted(loaded.signatures), "error": error}}))
"""
    result = run_fresh_python(code)
    assert result["signatures"] == ["serving_default", "translate"]
    assert result["default"][0] == "dcba" and result["translation"][0] == "dcba" and result["default"][1] == ""
    assert result["translation"] == result["again"]  # the sampled row too: seeded
    # An empty source has nothing to translate: an empty translation, not a made-up sentence.
    assert result["translation"][1] == "" and result["num_tokens"][1] == 0 and result["score"][1] == 0.0
    assert all(score <= 0 for score in result["score"])
    assert "num_beams must be at least 1" in result["error"]


def _check_every_weight_restored(work_dir):
    """What export loads is what training saved: two loads of the run's checkpoint hold the same
    weights (a weight the checkpoint misses would be freshly random each time). A layer keeping
    its sublayers in a Python list once escaped the checkpoint this way."""
    from keraslm.training import load_trained_model

    first, second = (load_trained_model(work_dir, use_cudnn=False).model for _ in range(2))
    for a, b in zip(first.weights, second.weights):
        if "seed_generator" not in a.path:  # dropout's random state, not a weight
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_transformer_checkpoint_restores_every_weight(seq2seq_run):
    _check_every_weight_restored(str(seq2seq_run["work_dir"]))


def test_lstm_encoder_decoder_trains_and_exports(tmp_path):
    """--model=lstm: trains a few steps, exports without cuDNN ops, and the export translates."""
    import keraslm
    from keraslm.config import ModelConfig, RunConfig, TokenizerConfig, TrainConfig
    from keraslm.export import export_from_work_dir
    from keraslm.training import train

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"en": s, "fr": t}) + "\n" for s, t in reverse_pairs(300, seed=2)), encoding="utf-8"
    )
    config = RunConfig(
        task="seq2seq",
        tokenizer=TokenizerConfig(tokenizer="char"),
        model=ModelConfig(model="lstm", sequence_length=10, hidden_dim=16, num_layers=1),
        train=TrainConfig(
            train_data=str(data), source_column="en", target_column="fr", batch_size=32, train_steps=30, eval_interval=30
        ),
    )
    result = train(config, str(tmp_path / "run"), verbose=False)
    assert np.isfinite(result.val_loss)
    _check_every_weight_restored(str(tmp_path / "run"))
    version = export_from_work_dir(str(tmp_path / "run"), str(tmp_path / "export"), verbose=False)
    graph = (tmp_path / "export" / "1" / "saved_model.pb").read_bytes()
    assert b"CudnnRNN" not in graph
    translations = keraslm.load(version).translate(["abc", "fed"], num_beams=2)
    assert len(translations) == 2 and all(isinstance(text, str) for text in translations)
    # int8 LSTM weights (keraslm's own quantization of the cells) in the translation export too.
    from keraslm.config import ExportConfig

    int8_version = export_from_work_dir(str(tmp_path / "run"), str(tmp_path / "int8"), ExportConfig(quantize="int8"), verbose=False)
    assert b"CudnnRNN" not in (tmp_path / "int8" / "1" / "saved_model.pb").read_bytes()
    assert len(keraslm.load(int8_version).translate(["abc", "fed"], num_beams=2)) == 2


def test_int8_export_translates_as_the_float_one(seq2seq_run, tmp_path):
    """--quantize=int8: the same signatures; the reversals of unseen strings stay right."""
    import keraslm
    import tensorflow as tf

    from keraslm.config import ExportConfig
    from keraslm.export import export_from_work_dir

    version = export_from_work_dir(str(seq2seq_run["work_dir"]), str(tmp_path / "int8"), ExportConfig(quantize="int8"), verbose=False)
    assert any(v.dtype == tf.int8 for v in tf.saved_model.load(version).model_variables)
    sources = [source for source, _ in reverse_pairs(60, seed=11, lengths=(3, 6))]
    float_translations = keraslm.load(str(seq2seq_run["export_dir"])).translate(sources, num_beams=1)
    int8_translations = keraslm.load(version).translate(sources, num_beams=1)
    assert sum(a == b for a, b in zip(float_translations, int8_translations)) >= 0.9 * len(sources)
    assert sum(t == s[::-1] for t, s in zip(int8_translations, sources)) >= 0.9 * len(sources)


@pytest.mark.parametrize(
    "content, args, expected",
    [
        # Each kind of bad pair file is tested in test_pairs.py; here, that keraslm-train shows one.
        ("source\ttarget\nabc\tcba\n", ["--source_column=en"], ["no column 'en'", "source, target"]),
    ],
    ids=["missing_column"],
)
def test_bad_pair_files_give_one_line_errors(tmp_path, content, args, expected):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    completed = run_cli(
        "train", "--task=seq2seq", f"--train_data={path}", f"--work_dir={tmp_path / 'run'}", "--train_steps=10", *args
    )
    assert completed.returncode != 0
    message = completed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in completed.stderr and str(path) in message
    for part in expected:
        assert part in message, message
    assert not (tmp_path / "run" / "config.json").exists()


def test_keraslm_serve_translates_over_rest(seq2seq_run, tmp_path):
    """TF Serving's REST protocol from keraslm-serve: serving_default in row format (beam search in
    the graph), the translate signature in columnar format with per-row settings, a bad value's 400."""

    server = ServeProcess(
        tmp_path, "--model_name=rev", f"--model_base_path={seq2seq_run['export_dir']}", wait_for="rev"
    )
    try:
        status, body = server.raw("POST", "/v1/models/rev:predict", json.dumps({"instances": ["abcd", "eef"]}).encode())
        assert status == 200 and body == {"predictions": ["dcba", "fee"]}, body
        request = {
            "signature_name": "translate",
            "inputs": {
                "source": ["abc", "fedc"], "max_new_tokens": [8, 2], "temperature": [0.0, 0.0], "num_beams": [1, 4],
                "length_penalty": [0.0, 0.6], "seed": [0, 0],
            },
        }
        status, body = server.raw("POST", "/v1/models/rev:predict", json.dumps(request).encode())
        assert status == 200, body
        assert body["outputs"]["translation"] == ["cba", "cd"] and body["outputs"]["num_tokens"] == [3, 2]
        request["inputs"]["num_beams"] = [1, 65]
        status, body = server.raw("POST", "/v1/models/rev:predict", json.dumps(request).encode())
        assert status == 400 and "num_beams must be at most 64" in body["error"], body
    finally:
        assert server.stop() == 0


def test_export_flags_set_the_translation_defaults(seq2seq_run, tmp_path):
    """keraslm-export takes a translation model's own decoding flags (and refuses a language
    model's); serving_default then uses them, and --kv_cache=false exports the recomputing decoder."""
    export_dir = tmp_path / "export"
    completed = run_cli(
        "export", f"--work_dir={seq2seq_run['work_dir']}", f"--export_dir={export_dir}", "--num_beams=1",
        "--length_penalty=1.5", "--max_new_tokens=5", "--kv_cache=false",
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    config = json.loads((export_dir / "1" / "assets" / "config.json").read_text(encoding="utf-8"))
    assert {key: config["export"][key] for key in ("num_beams", "length_penalty", "max_new_tokens", "kv_cache")} == {
        "num_beams": 1, "length_penalty": 1.5, "max_new_tokens": 5, "kv_cache": False,
    }
    import keraslm

    assert keraslm.load(str(export_dir)).translate(["abcdef", "fed"]) == ["fedcb", "def"]  # cut at 5 tokens
    completed = run_cli("export", f"--work_dir={seq2seq_run['work_dir']}", f"--export_dir={tmp_path / 'x'}", "--temperature=2")
    assert completed.returncode == 2 and "a translation model, whose export does not use this flag" in completed.stderr


def test_resume_refuses_swapped_columns_and_strategies(seq2seq_run, tmp_path):
    """A translation run resumed with its columns swapped would go on training the other
    direction: refused, naming both; tf.distribute strategies are refused up front."""
    import shutil

    work_dir = tmp_path / "run"
    shutil.copytree(seq2seq_run["work_dir"], work_dir)
    args = [*TINY_SEQ2SEQ, f"--train_data={seq2seq_run['train_data']}", f"--work_dir={work_dir}", "--train_steps=800"]
    completed = run_cli("train", *args, "--source_column=target", "--target_column=source")
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "--source_column: '' -> 'target'" in completed.stderr
    completed = run_cli("train", *args, "--strategy=mirrored", "--num_cpu_devices=2")
    assert completed.returncode == 2 and "does not work with --task=seq2seq yet" in completed.stderr


def test_output_file_writes_through_a_link(seq2seq_run, tmp_path):
    """--output_file given a symbolic link writes its target (a rename would replace the link)."""
    target, link = tmp_path / "real.txt", tmp_path / "link.txt"
    target.write_text("old\n", encoding="utf-8")
    link.symlink_to(target)
    completed = run_cli("translate", f"--model_dir={seq2seq_run['export_dir']}", "--text=abc", f"--output_file={link}")
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert link.is_symlink() and target.read_text(encoding="utf-8") == "cba\n"
