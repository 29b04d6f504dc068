"""Text classification end to end: CLI training on a toy set, the export in a fresh process, the
Python API, keraslm-classify, keraslm-evaluate, and one-line errors for bad tables."""

import csv
import gzip
import json
import random

import pytest

from conftest import REPO, run_cli, run_fresh_python

POSITIVE = {"en": ["good", "great", "wonderful", "excellent", "lovely"], "zh": ["好吃", "满意", "很棒", "推荐"]}
NEGATIVE = {"en": ["bad", "awful", "terrible", "boring", "poor"], "zh": ["难吃", "太慢", "失望", "很差"]}
FILLER = {"en": ["the", "movie", "was", "really", "and", "plot", "film", "quite", "a"], "zh": ["外卖", "今天", "送餐", "味道", "这家"]}


def _toy_examples(count, seed):
    """(text, label) pairs, separable by their sentiment words, English and Chinese mixed.

    The sentiment word sits among the first three words, so truncation to --sequence_length
    never removes it; fillers make some texts longer than that.
    """
    generator = random.Random(seed)
    examples = []
    for index in range(count):
        language = "en" if index % 2 else "zh"
        label = "pos" if (index // 2) % 2 else "neg"
        word = generator.choice((POSITIVE if label == "pos" else NEGATIVE)[language])
        fillers = [generator.choice(FILLER[language]) for _ in range(generator.randint(2, 8))]
        fillers.insert(generator.randint(0, 2), word)
        examples.append((("" if language == "zh" else " ").join(fillers), label))
    return examples


def _write_csv(path, examples, header=("text", "label")):
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(examples)


def _write_jsonl_gz(path, examples):
    with gzip.open(path, "wt", encoding="utf-8") as file:
        for text, label in examples:
            file.write(json.dumps({"label": label, "text": text}, ensure_ascii=False) + "\n")


TINY = {
    "transformer": ["--model=transformer", "--num_layers=1", "--num_heads=2", "--hidden_dim=32"],
    "lstm": ["--model=lstm", "--num_layers=1", "--hidden_dim=32"],
}


def _classify_args(train_data, work_dir, *extra):
    return [
        "--task=classify",
        f"--train_data={train_data}",
        f"--work_dir={work_dir}",
        "--tokenizer=wordpiece",
        "--vocabulary_size=200",
        "--sequence_length=10",
        "--batch_size=16",
        "--train_steps=80",
        "--eval_interval=40",
        "--learning_rate=3e-3",
        "--seed=5",
        *extra,
    ]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy")
    paths = {"train": directory / "train.csv", "valid": directory / "valid.jsonl.gz"}
    _write_csv(paths["train"], _toy_examples(240, seed=1))
    # Another format than training's: --valid_data is read by its own extension.
    _write_jsonl_gz(paths["valid"], _toy_examples(40, seed=2))
    paths["directory"] = directory
    return paths


@pytest.fixture(scope="module", params=sorted(TINY))
def toy_classifier(request, toy, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"classifier_{request.param}")
    work_dir, export_dir = root / "run", root / "export"
    completed = run_cli(
        "train",
        *_classify_args(toy["train"], work_dir, f"--valid_data={toy['valid']}", f"--export_dir={export_dir}", *TINY[request.param]),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {"kind": request.param, "work_dir": work_dir, "export_dir": export_dir, "stdout": completed.stdout}


def test_toy_set_learned_to_100_percent(toy_classifier):
    evaluations = json.loads((toy_classifier["work_dir"] / "metrics.json").read_text())["evaluations"]
    assert [record["step"] for record in evaluations] == [40, 80]
    assert evaluations[-1]["val_accuracy"] == 1.0, evaluations
    assert "examples_per_second" in evaluations[-1]
    config = json.loads((toy_classifier["work_dir"] / "config.json").read_text())
    assert config["task"] == "classify" and config["labels"] == ["neg", "pos"]
    # Some texts are longer than --sequence_length=10 tokens: the log says how many were cut.
    assert "validation texts are longer than --sequence_length=10 tokens and were truncated" in toy_classifier["stdout"]


def test_checkpoints_keep_the_backbone_apart_from_the_head(toy_classifier):
    """A backbone restores alone from a training checkpoint (what fine-tuning under a new head needs)."""
    result = run_fresh_python(
        "import json, numpy as np, tensorflow as tf\n"
        "from keraslm.config import load_run_config\n"
        "from keraslm.tasks import build_model\n"
        f"work_dir = {str(toy_classifier['work_dir'])!r}\n"
        "config = load_run_config(work_dir + '/config.json')\n"
        "path = tf.train.latest_checkpoint(work_dir + '/checkpoints')\n"
        "backbone = build_model(config).get_layer('backbone')\n"
        "before = [np.array(w) for w in backbone.weights]\n"
        "# Only the backbone is asked for: every one of its variables must be in the checkpoint.\n"
        "tf.train.Checkpoint(backbone=backbone).restore(path).expect_partial().assert_existing_objects_matched()\n"
        "changed = [not np.array_equal(a, np.array(w)) for a, w in zip(before, backbone.weights)]\n"
        "head = build_model(config)\n"
        "layers = {layer.name: layer for layer in head.layers if layer.name != 'backbone' and layer.weights}\n"
        "tf.train.Checkpoint(head=layers).restore(path).expect_partial().assert_existing_objects_matched()\n"
        "print(json.dumps({'weights': len(changed), 'changed': sum(changed), 'head': sorted(layers)}))\n"
    )
    assert result["weights"] > 0 and result["changed"] == result["weights"], result
    assert result["head"] == ["classifier"]


EXPORT_CHECK = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  The tokenizer's ops.
assert not [name for name in sys.modules if name.startswith("keraslm")]
model = tf.saved_model.load({path!r})
signature = model.signatures["serving_default"]
texts = {texts!r}
outputs = signature(text=tf.constant(texts))
print(json.dumps({{
    "inputs": {{key: [spec.dtype.name, spec.shape.as_list()] for key, spec in signature.structured_input_signature[1].items()}},
    "outputs": {{key: [spec.dtype.name, spec.shape.as_list()] for key, spec in signature.structured_outputs.items()}},
    "label": [label.decode("utf-8") for label in outputs["label"].numpy()],
    "label_id": outputs["label_id"].numpy().tolist(),
    "scores": outputs["scores"].numpy().tolist(),
}}))
"""

TEXTS = ["a truly wonderful film", "the plot was awful and boring", "这家外卖很好吃，推荐", "送餐太慢，很失望", ""]
EXPECTED = ["pos", "neg", "pos", "neg"]


def test_export_in_a_fresh_process_with_tensorflow_only(toy_classifier):
    path = toy_classifier["export_dir"] / "1"
    assert (path / "saved_model.pb").is_file()
    result = run_fresh_python(EXPORT_CHECK.format(path=str(path), texts=TEXTS))
    assert result["inputs"] == {"text": ["string", [None]]}
    assert result["outputs"] == {
        "label": ["string", [None]],
        "label_id": ["int32", [None]],
        "scores": ["float32", [None, 2]],
    }
    assert result["label"][:4] == EXPECTED
    assert [["neg", "pos"][index] for index in result["label_id"]] == result["label"]
    for scores, label_id in zip(result["scores"], result["label_id"]):
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
        assert scores[label_id] == max(scores)
    config = json.loads((path / "assets" / "config.json").read_text())
    assert config["task"] == "classify" and config["labels"] == ["neg", "pos"]


def test_python_api_classifies(toy_classifier):
    if toy_classifier["kind"] != "transformer":
        pytest.skip("the API is the same for every backbone")
    result = run_fresh_python(
        "import json, keraslm\n"
        f"model = keraslm.load({str(toy_classifier['export_dir'])!r})\n"
        f"results = model.classify({TEXTS!r})\n"
        "print(json.dumps({'type': type(model).__name__, 'labels': model.labels, "
        "'results': [[r.label, r.score, r.scores] for r in results]}))\n"
    )
    assert result["type"] == "Classifier" and result["labels"] == ["neg", "pos"]
    assert [label for label, _, _ in result["results"][:4]] == EXPECTED
    for label, score, scores in result["results"]:
        assert score == scores[label] and sum(scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_keraslm_classify_prints_label_and_score_per_line(toy_classifier, tmp_path):
    if toy_classifier["kind"] != "transformer":
        pytest.skip("the command is the same for every backbone")
    texts_file = tmp_path / "texts.txt"
    # An empty line gets its own output line, so outputs line up with inputs.
    texts_file.write_text("很失望，太难吃\n\nexcellent and lovely\r\n", encoding="utf-8")
    completed = run_cli(
        "classify", f"--model_dir={toy_classifier['export_dir']}", "--text=a great movie", "--text=bad film",
        f"--input_file={texts_file}",
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 5, completed.stdout
    labels = [line.split("\t")[0] for line in lines]
    assert labels[:2] == ["pos", "neg"] and labels[2] == "neg" and labels[4] == "pos"
    for line in lines:
        label, score = line.split("\t")
        assert 0.5 <= float(score) <= 1.0 and len(score.split(".")[1]) == 4


def test_keraslm_evaluate_json_on_a_known_file(toy_classifier, tmp_path):
    if toy_classifier["kind"] != "transformer":
        pytest.skip("the command is the same for every backbone")
    examples = _toy_examples(40, seed=3)
    # The model gets every clean example right (checked below); two "pos" rows relabelled "neg"
    # are then two known mistakes: true neg, predicted pos.
    flipped = [index for index, (_, label) in enumerate(examples) if label == "pos"][:2]
    for index in flipped:
        examples[index] = (examples[index][0], "neg")
    data = tmp_path / "eval.tsv"
    with open(data, "w", encoding="utf-8") as file:
        file.write("sentiment\treview\n")
        file.writelines(f"{label}\t{text}\n" for text, label in examples)
    output_json, plot_dir = tmp_path / "metrics.json", tmp_path / "plots"
    completed = run_cli(
        "evaluate", f"--model_dir={toy_classifier['export_dir']}", f"--data={data}", "--label_column=sentiment",
        f"--output_json={output_json}", f"--plot_dir={plot_dir}",
    )
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads(completed.stdout.strip().splitlines()[-1])
    assert json.loads(output_json.read_text()) == metrics
    negatives = sum(1 for _, label in examples if label == "neg")
    positives = len(examples) - negatives
    assert metrics["num_examples"] == 40 and metrics["labels"] == ["neg", "pos"]
    assert metrics["confusion_matrix"] == [[negatives - 2, 2], [0, positives]]
    assert metrics["accuracy"] == pytest.approx(38 / 40)
    neg, pos = metrics["per_class"]["neg"], metrics["per_class"]["pos"]
    assert neg["precision"] == 1.0 and neg["recall"] == pytest.approx((negatives - 2) / negatives)
    assert pos["precision"] == pytest.approx(positives / (positives + 2)) and pos["recall"] == 1.0
    assert neg["support"] == negatives and pos["support"] == positives
    assert metrics["macro_f1"] == pytest.approx((neg["f1"] + pos["f1"]) / 2)
    assert (plot_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bad_tables(directory):
    good = _toy_examples(60, seed=4)
    _write_csv(directory / "good.csv", good)
    _write_csv(directory / "other_columns.csv", good, header=("comment", "stars", "label"))
    with open(directory / "ragged.tsv", "w", encoding="utf-8") as file:
        file.write("text\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in good[:5]) + "just text\n")
    rows = [list(row) for row in good]
    rows[6][0] = "   "
    _write_csv(directory / "empty_text.csv", rows)
    _write_csv(directory / "unseen_label.csv", good[:7] + [("something else", "meh")])
    _write_csv(directory / "one_class.csv", [(text, "pos") for text, _ in good])
    (directory / "latin1.csv").write_bytes(b"text,label\ngood film,pos\n" + "caf\u00e9 bad,neg\n".encode("latin-1"))
    (directory / "array.jsonl").write_text('{"text": "good", "label": "pos"}\n["bad", "neg"]\n', encoding="utf-8")


BAD_INPUT = {
    "missing column": (["--train_data={d}/good.csv", "--text_column=review"], "--train_data={d}/good.csv: line 1 (header) has no column 'review' (columns: text, label)"),
    "ragged row": (["--train_data={d}/ragged.tsv"], "--train_data={d}/ragged.tsv: line 7 has 1 field but the header has 2"),
    "empty text": (["--train_data={d}/empty_text.csv"], "--train_data={d}/empty_text.csv: line 8: the text is empty"),
    "label training never saw": (
        ["--train_data={d}/good.csv", "--valid_data={d}/unseen_label.csv"],
        "--valid_data={d}/unseen_label.csv: line 9: label 'meh' does not occur in the training data (labels: neg, pos)",
    ),
    "single class": (["--train_data={d}/one_class.csv"], "every example has the label 'pos'; a classifier needs at least two classes"),
    "not utf-8": (["--train_data={d}/latin1.csv"], "--train_data={d}/latin1.csv: line 3, column 4 (byte offset 28): byte 0xe9 is not valid UTF-8"),
    "jsonl line not an object": (["--train_data={d}/array.jsonl"], "--train_data={d}/array.jsonl: line 2 is a JSON array, not an object"),
    "two training files": (["--train_data={d}/good.csv,{d}/ragged.tsv"], "--task=classify reads one table, not 2 files"),
    "cannot tell the text column": (["--train_data={d}/other_columns.csv"], "cannot tell which column holds the text (columns: comment, stars, label); pass --text_column"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_tables_are_refused_before_anything_is_written(tmp_path, case):
    """What keraslm-train runs, in this process: the files are read and checked before the work
    directory is touched, and the error is one line."""
    from keraslm import training
    from keraslm.config import RunConfig, TrainConfig
    from keraslm.errors import InvalidInputError

    _bad_tables(tmp_path)
    args, expected = BAD_INPUT[case]
    settings = dict(arg.format(d=tmp_path)[2:].split("=", 1) for arg in args)
    work_dir = tmp_path / "run"
    config = RunConfig(task="classify", train=TrainConfig(train_steps=5, **settings))
    with pytest.raises(InvalidInputError) as raised:
        training.train(config, str(work_dir), verbose=False)
    assert expected.format(d=tmp_path) in str(raised.value) and "\n" not in str(raised.value)
    assert not work_dir.exists()


@pytest.mark.parametrize("case", ["missing column", "label training never saw"])
def test_bad_tables_give_one_line_on_the_command_line(tmp_path, case):
    _bad_tables(tmp_path)
    args, expected = BAD_INPUT[case]
    work_dir = tmp_path / "run"
    completed = run_cli(
        "train", "--task=classify", *[arg.format(d=tmp_path) for arg in args], f"--work_dir={work_dir}", "--train_steps=5"
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("keraslm-train: error: ") and expected.format(d=tmp_path) in lines[0], lines[0]
    assert not work_dir.exists()


def test_evaluate_refuses_a_label_the_model_does_not_know(toy_classifier, tmp_path):
    if toy_classifier["kind"] != "lstm":
        pytest.skip("the command is the same for every backbone")
    data = tmp_path / "eval.csv"
    _write_csv(data, _toy_examples(4, seed=6) + [("an odd one", "neutral")])
    completed = run_cli("evaluate", f"--model_dir={toy_classifier['export_dir']}", f"--data={data}")
    assert completed.returncode == 2
    assert completed.stderr.strip() == (
        f"keraslm-evaluate: error: --data={data}: line 6: label 'neutral' is not one the model was trained on "
        "(its labels: neg, pos); check --label_column, or remove such rows"
    )


def test_each_command_refuses_the_other_kind_of_export(toy_classifier, trained_models):
    if toy_classifier["kind"] != "lstm":
        pytest.skip("the command is the same for every backbone")
    completed = run_cli("generate", f"--model_dir={toy_classifier['export_dir']}", "--prompt=hi")
    assert completed.returncode == 2
    assert "is a text classifier export, not a language model; use keraslm-classify" in completed.stderr
    completed = run_cli("classify", f"--model_dir={trained_models['transformer']['export_dir']}", "--text=hi")
    assert completed.returncode == 2
    assert "is a language model export, not a text classifier; use keraslm-generate" in completed.stderr


def test_resume_with_other_labels_is_refused(toy_classifier, tmp_path):
    if toy_classifier["kind"] != "lstm":
        pytest.skip("the same for every backbone")
    other = tmp_path / "other.csv"
    _write_csv(other, [(text, "good" if label == "pos" else "bad") for text, label in _toy_examples(60, seed=7)])
    completed = run_cli(
        "train", *_classify_args(other, toy_classifier["work_dir"], "--train_steps=100", *TINY["lstm"])
    )
    assert completed.returncode == 2
    assert "has the labels bad, good but the run in" in completed.stderr and "was trained on neg, pos" in completed.stderr


def test_a_keraslm_0_1_work_dir_is_refused_with_what_to_do(tmp_path):
    work_dir = tmp_path / "old"
    (work_dir / "tokenizer").mkdir(parents=True)
    # config.json as keraslm 0.1 wrote it: no format_version, no labels.
    (work_dir / "config.json").write_text(
        json.dumps({"task": "lm", "tokenizer": {"tokenizer": "char", "vocabulary_size": 0}, "model": {}, "train": {"train_data": "x"}})
    )
    for command, args in (("export", [f"--export_dir={tmp_path / 'export'}"]), ("train", [f"--train_data={REPO / 'data/tinyshakespeare/input.txt'}"])):
        completed = run_cli(command, f"--work_dir={work_dir}", *args)
        assert completed.returncode == 2, completed.stderr
        assert "this run was trained by keraslm 0.1" in completed.stderr
        assert "Models it exported still load and serve unchanged" in completed.stderr
    assert not (tmp_path / "export").exists()


def test_every_setting_is_a_flag_declared_once():
    """The flags come from the config dataclasses: same names, defaults and help, and back."""
    result = run_fresh_python(
        "import dataclasses, json\n"
        "from absl import flags\n"
        "from keraslm import config as config_lib\n"
        "from keraslm.cli import train\n"
        "train.define_flags()\n"
        "flags.FLAGS(['keraslm-train'])\n"
        "fields = [f for cls in (config_lib.RunConfig, config_lib.TokenizerConfig, config_lib.ModelConfig, config_lib.TrainConfig)\n"
        "          for f in dataclasses.fields(cls) if f.metadata.get('flag')]\n"
        "print(json.dumps({\n"
        "    'missing': [f.name for f in fields if f.name not in flags.FLAGS],\n"
        "    'no_help': [f.name for f in fields if not flags.FLAGS[f.name].help],\n"
        "    'round_trip': train.config_from_flags() == config_lib.RunConfig(),\n"
        "    'count': len(fields),\n"
        "}))\n"
    )
    assert result["missing"] == [] and result["no_help"] == [] and result["round_trip"]
    assert result["count"] >= 25


@pytest.mark.parametrize("kind", sorted(TINY))
def test_an_empty_text_pools_to_zeros_so_the_bias_decides(kind):
    """No tokens: the pooled features are zeros, not the padding's -1e4, whatever the backbone."""
    import numpy as np

    from keraslm.config import ModelConfig, RunConfig
    from keraslm.tasks import build_model

    config = RunConfig(
        task="classify", labels=["a", "b", "c"],
        model=ModelConfig(model=kind, vocabulary_size=30, sequence_length=8, hidden_dim=8, num_layers=1, num_heads=2),
    )
    model = build_model(config)
    bias = np.array([0.3, -0.2, 0.5], np.float32)
    model.get_layer("classifier").bias.assign(bias)
    logits = np.asarray(model(np.zeros([2, 4], np.int32), training=False))
    np.testing.assert_allclose(logits, np.stack([bias, bias]), atol=1e-6)
    # A real text is unaffected by extra padding columns.
    ids = np.array([[5, 7, 9, 0]], np.int32)
    wider = np.concatenate([ids, np.zeros([1, 4], np.int32)], axis=1)
    np.testing.assert_allclose(np.asarray(model(ids, training=False)), np.asarray(model(wider, training=False)), atol=1e-5)


def test_language_model_export_flags_are_refused_for_a_classifier(toy_classifier, tmp_path):
    if toy_classifier["kind"] != "lstm":
        pytest.skip("the same for every backbone")
    completed = run_cli("export", f"--work_dir={toy_classifier['work_dir']}", f"--export_dir={tmp_path / 'e'}", "--temperature=5")
    assert completed.returncode == 2
    assert "--temperature: --work_dir=" in completed.stderr and "a classifier, whose export does not use this flag" in completed.stderr
    assert not (tmp_path / "e").exists()
    config = json.loads((toy_classifier["export_dir"] / "1" / "assets" / "config.json").read_text())
    # How the weights are stored, and none of a language model's decoding settings.
    assert config["export"] == {"format": "saved_model", "quantize": "none"}


def test_export_normalizes_and_truncates_exactly_as_training(tmp_path):
    """--lowercase, --strip_markup and --truncation=head_tail: the served model sees training's ids."""
    import numpy as np
    import tensorflow as tf

    from keraslm import tables
    from keraslm.config import ModelConfig, RunConfig, TokenizerConfig, save_run_config
    from keraslm.tasks import build_model
    from keraslm.tasks.classifier_export import ClassifierServer
    from keraslm.tokenizers import train_tokenizer

    texts = [
        "The FILM was <i>GOOD</i>: really good, lovely and wonderful, a great and excellent film",
        "BAD<br /><br />bad",
        "这家外卖<b>很好吃</b>，推荐",
    ]
    config = RunConfig(
        task="classify",
        tokenizer=TokenizerConfig(tokenizer="wordpiece", vocabulary_size=120, lowercase=True, strip_markup=True),
        model=ModelConfig(model="lstm", sequence_length=8, truncation="head_tail", hidden_dim=8, num_layers=1),
        labels=["neg", "pos"],
    )
    tokenizer = train_tokenizer(config.tokenizer, "\n".join(texts), str(tmp_path / "tokenizer"))
    config.model.vocabulary_size = tokenizer.vocabulary_size
    ids, cut = tables.tokenize_texts(tokenizer, texts, 8, truncation="head_tail")
    assert cut == 2  # The first and the third are longer than 8 tokens.
    head, _ = tables.tokenize_texts(tokenizer, texts, 8)
    assert not np.array_equal(ids, head)  # head_tail is not head.
    config_path = tmp_path / "config.json"
    save_run_config(config, config_path)
    model = build_model(config)
    served = ClassifierServer(model, tokenizer, config, str(config_path)).serving_default(tf.constant(texts))
    expected = tf.nn.softmax(model(ids, training=False), axis=-1).numpy()
    np.testing.assert_allclose(served["scores"].numpy(), expected, atol=1e-6)
