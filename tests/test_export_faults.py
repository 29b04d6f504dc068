"""Damaged exports and bad text get one line naming what to fix, not a traceback.

Every case damages a real copy of an exported model (truncated files, deleted assets) or passes
real bytes on a real command line, and runs the real command in a subprocess.
"""

import json
import math
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, SHAKESPEARE, run_cli, run_fresh_python


def copy_export(trained_models, kind, destination):
    """A copy of the tiny exported model's version 1, at destination/1; returns destination/1."""
    version = destination / "1"
    shutil.copytree(trained_models[kind]["export_dir"] / "1", version)
    return version


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def assert_one_line_error(completed, program, *expected):
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr[-3000:]
    assert lines[0].startswith(f"keraslm-{program}: error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in completed.stderr


def damage_saved_model(version):
    truncate(version / "saved_model.pb")


def damage_variables_data(version):
    truncate(version / "variables" / "variables.data-00000-of-00001")


def damage_variables_index(version):
    truncate(version / "variables" / "variables.index")


def remove_config(version):
    (version / "assets" / "config.json").unlink()


def remove_vocabulary(version):
    (version / "assets" / "vocabulary.txt").unlink()


# Each damage, and what the message says about it.
DAMAGE = {
    "saved_model.pb truncated": (damage_saved_model, "saved_model.pb cannot be parsed"),
    "variables data truncated": (damage_variables_data, "the weights in variables/ cannot be read"),
    "variables index truncated": (damage_variables_index, "the weights in variables/ cannot be read"),
    "assets/config.json missing": (remove_config, "assets/config.json is missing"),
    "assets/vocabulary.txt missing": (remove_vocabulary, "assets/vocabulary.txt is missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_export_gets_one_line_from_generate_and_load(trained_models, tmp_path, case):
    version = copy_export(trained_models, "transformer", tmp_path / "export")
    damage, detail = DAMAGE[case]
    damage(version)
    completed = run_cli("generate", f"--model_dir={version}", "--prompt=ROMEO:", "--max_new_tokens=5", "--seed=1")
    assert_one_line_error(completed, "generate", f"--model_dir={version}", detail, "export it again with keraslm-export")
    assert completed.stdout == ""
    # The Python API raises the same message as an InvalidInputError.
    result = run_fresh_python(
        "import json, keraslm\n"
        "from keraslm.errors import InvalidInputError\n"
        "try:\n"
        f"    keraslm.load({str(version)!r}).generate(['ROMEO:'], max_new_tokens=5, seed=1)\n"
        "    print(json.dumps('no error'))\n"
        "except InvalidInputError as error:\n"
        "    print(json.dumps(str(error)))\n"
    )
    assert f"--model_dir={version}" in result and "keraslm-export" in result, result


@pytest.mark.parametrize("case", ["saved_model.pb truncated", "variables data truncated", "assets/config.json missing"])
def test_damaged_export_gets_one_line_from_evaluate(trained_models, tmp_path, case):
    version = copy_export(trained_models, "lstm", tmp_path / "export")
    damage, detail = DAMAGE[case]
    damage(version)
    data = tmp_path / "data.txt"
    data.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:2000], encoding="utf-8")
    completed = run_cli("evaluate", f"--model_dir={tmp_path / 'export'}", f"--data={data}")
    assert_one_line_error(completed, "evaluate", f"--model_dir={tmp_path / 'export'}", detail, "keraslm-export")


@pytest.fixture(scope="module")
def sentencepiece_export(tmp_path_factory):
    """An untrained tiny Transformer with a SentencePiece tokenizer, exported (no training needed)."""
    directory = tmp_path_factory.mktemp("sentencepiece")
    code = f"""
import json
from keraslm.tf_import import import_tensorflow_quietly
import_tensorflow_quietly()
from keraslm.config import ModelConfig, RunConfig, TokenizerConfig
from keraslm.export import export_model
from keraslm.tasks import build_model
from keraslm.tokenizers import train_tokenizer
text = open({str(SHAKESPEARE)!r}, encoding="utf-8").read()[:30000]
tokenizer = train_tokenizer(TokenizerConfig("sentencepiece", 120), text, {str(directory / "tokenizer")!r})
config = RunConfig(
    tokenizer=TokenizerConfig("sentencepiece", 120),
    model=ModelConfig(model="transformer", vocabulary_size=tokenizer.vocabulary_size, sequence_length=16,
                      hidden_dim=16, num_layers=1, num_heads=2),
)
path = export_model(build_model(config, use_cudnn=False), tokenizer, config, {str(directory / "export")!r}, verbose=False)
print(json.dumps(path))
"""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # Training and loading the tokenizer keep sentencepiece's native log lines off stderr.
    assert completed.stderr == "", completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_sentencepiece_export_runs_quietly_and_needs_its_model_asset(sentencepiece_export, tmp_path):
    completed = run_cli("generate", f"--model_dir={sentencepiece_export}", "--prompt=ROMEO:", "--max_new_tokens=5", "--seed=1")
    assert completed.returncode == 0 and completed.stderr == "", completed.stderr
    assert completed.stdout.startswith("ROMEO:")
    version = tmp_path / "export" / "1"
    shutil.copytree(sentencepiece_export, version)
    (version / "assets" / "sentencepiece.model").unlink()
    completed = run_cli("generate", f"--model_dir={version}", "--prompt=ROMEO:", "--max_new_tokens=5", "--seed=1")
    assert_one_line_error(completed, "generate", "assets/sentencepiece.model is missing", "keraslm-export")


@pytest.mark.parametrize("flag", ["prompt", "stop"])
def test_non_utf8_prompt_or_stop_is_one_line(trained_models, flag):
    # What `--prompt=$'\xff'` passes: a byte that is not UTF-8 (absl hands Python a lone surrogate).
    args = [b"--prompt=ROMEO:", b"--stop=\n"]
    args = [f"--{flag}=ab\xff".encode("latin-1") if arg.startswith(f"--{flag}=".encode()) else arg for arg in args]
    completed = subprocess.run(
        [sys.executable, "-m", "keraslm.cli.generate", f"--model_dir={trained_models['lstm']['export_dir']}", *args],
        capture_output=True,
        timeout=300,
        cwd=REPO,
    )
    completed.stderr = completed.stderr.decode("utf-8", "replace")
    assert_one_line_error(completed, "generate", f"--{flag} is not UTF-8 text", "byte 0xff at byte offset 2")


def test_incomplete_newest_version_is_skipped_with_a_note(trained_models, tmp_path):
    base = tmp_path / "export"
    copy_export(trained_models, "transformer", base)
    (base / "2" / "variables").mkdir(parents=True)  # An export that died before saved_model.pb.
    completed = run_cli("generate", f"--model_dir={base}", "--prompt=ROMEO:", "--max_new_tokens=8", "--seed=1")
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.splitlines() == [
        f"keraslm: note: {base / '2'} has no saved_model.pb (incomplete export?); using {base / '1'}"
    ]
    same = run_cli("generate", f"--model_dir={base / '1'}", "--prompt=ROMEO:", "--max_new_tokens=8", "--seed=1")
    assert same.stdout == completed.stdout and same.stderr == ""
    shutil.rmtree(base / "1")
    completed = run_cli("generate", f"--model_dir={base}", "--prompt=ROMEO:")
    assert_one_line_error(completed, "generate", "no numbered version directory with one", "version directories 2 have none")


def write_nan_weights(version):
    """Rewrites the export's checkpoint with every float variable NaN, as a diverged run would."""
    code = f"""
import json
import numpy as np
import tensorflow as tf
prefix = {str(version / "variables" / "variables")!r}
reader = tf.train.load_checkpoint(prefix)
names = sorted(reader.get_variable_to_dtype_map())
tensors = []
for name in names:
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        value = np.full_like(value, np.nan)
    tensors.append(tf.constant(value))
tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
print(json.dumps(len(names)))
"""
    assert run_fresh_python(code) > 0


def test_evaluate_prints_null_not_nan(trained_models, tmp_path):
    version = copy_export(trained_models, "transformer", tmp_path / "export")
    write_nan_weights(version)
    data = tmp_path / "data.txt"
    data.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    output = tmp_path / "metrics.json"
    completed = run_cli("evaluate", f"--model_dir={version}", f"--data={data}", f"--output_json={output}")
    assert completed.returncode == 0, completed.stderr

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    printed = json.loads(completed.stdout.strip().splitlines()[-1], parse_constant=refuse)
    written = json.loads(output.read_text(encoding="utf-8"), parse_constant=refuse)
    assert printed == written
    assert printed["loss"] is None and printed["perplexity"] is None and printed["bits_per_byte"] is None
    assert printed["num_tokens"] > 0


def test_evaluation_json_safe():
    from keraslm.evaluation import json_safe

    metrics = json_safe({"loss": math.nan, "perplexity": math.inf, "bits_per_byte": 1.5, "num_tokens": 3})
    assert metrics == {"loss": None, "perplexity": None, "bits_per_byte": 1.5, "num_tokens": 3}
    json.dumps(metrics, allow_nan=False)


def test_exports_run_in_a_tf1_session_as_tf_serving_runs_them(trained_models):
    """TF Serving restores the checkpoint and runs the signatures in a graph Session; exports that
    tracked Keras 3's variable wrappers failed there with "Could not find variable"."""
    code = f"""
import json
import tensorflow as tf, tensorflow_text
graph = tf.Graph()
with graph.as_default():
    session = tf.compat.v1.Session(graph=graph)
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], {str(trained_models['transformer']['export_dir'] / '1')!r})
    signature = meta_graph.signature_def["serving_default"]
    text = session.run(signature.outputs["text"].name, {{signature.inputs["prompt"].name: ["ROMEO:"]}})
    score = meta_graph.signature_def["score"]
    count = session.run(score.outputs["num_tokens"].name, {{score.inputs["text"].name: ["First Citizen"]}})
print(json.dumps([text[0].decode("utf-8"), int(count[0])]))
"""
    text, count = run_fresh_python(code)
    assert text and count == len("First Citizen") - 1


def test_exports_from_before_the_variable_fix_still_load(trained_models, tmp_path):
    """An export that tracks Keras 3's variable wrappers (as keraslm-export did before) loads
    through tf.saved_model.load, with a note saying to export it again; the texts agree."""
    old = tmp_path / "old"
    code = f"""
import json
from keraslm.tf_import import import_tensorflow_quietly
import_tensorflow_quietly()
from keraslm import export
from keraslm.tasks import export_module
from keraslm.training import load_trained_model
loaded = load_trained_model({str(trained_models['transformer']['work_dir'])!r}, use_cudnn=False)
export_module.tf_variable = lambda variable: variable  # The exporter as it was.
print(json.dumps(export.export_model(loaded[1], loaded[2], loaded[0], {str(old)!r}, verbose=False)))
"""
    old_version = run_fresh_python(code, timeout=300)
    args = ("--prompt=ROMEO:", "--max_new_tokens=12", "--seed=4")
    before = run_cli("generate", f"--model_dir={old_version}", *args)
    now = run_cli("generate", f"--model_dir={trained_models['transformer']['export_dir']}", *args)
    assert before.returncode == 0 and now.returncode == 0, before.stderr + now.stderr
    assert before.stdout == now.stdout
    assert now.stderr == ""
    (note,) = before.stderr.splitlines()
    assert note.startswith(f"keraslm: note: {old_version} was written by an older keraslm-export") and "export it again" in note
