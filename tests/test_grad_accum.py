"""--grad_accum_steps: one optimizer step over N micro-batches equals one step on the N×-larger batch."""

import json
import random

import numpy as np
import pytest

from conftest import run_cli, run_fresh_python

ITERATIONS = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
# The learning rate is high and warmup off, so one step moves every weight visibly.
STEP = {"train_steps": 1, "eval_interval": 1, "eval_steps": 1, "warmup_steps": 0, "learning_rate": 1e-2, "seed": 3}


def _config(task, train_data, **train):
    from keraslm.config import ModelConfig, RunConfig, TokenizerConfig, TrainConfig

    model = ModelConfig(model="transformer", sequence_length=16, num_layers=1, num_heads=2, hidden_dim=16)
    train = TrainConfig(train_data=str(train_data), **train)
    return RunConfig(task=task, tokenizer=TokenizerConfig(tokenizer="char"), model=model, train=train)


def _train(task, train_data, work_dir, **train):
    from keraslm import training

    return training.train(_config(task, train_data, **train), str(work_dir), verbose=False)


def _checkpoint(work_dir):
    """{variable path: value} of the newest checkpoint: weights, optimizer slots, counters."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(work_dir / "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if "CHECKPOINTABLE" not in name}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    from conftest import SHAKESPEARE

    directory = tmp_path_factory.mktemp("grad_accum")
    english = directory / "english.txt"
    english.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    generator = random.Random(1)
    rows = []
    for index in range(200):
        label = "pos" if index % 2 else "neg"
        word = generator.choice(["good", "great", "fine"] if label == "pos" else ["bad", "poor", "dull"])
        # Lengths vary, so batches are cut to their longest text and padding must not count.
        rows.append(f"{' '.join(['the', 'film', 'was', word] + ['quite'] * generator.randint(0, 9))},{label}")
    table = directory / "reviews.csv"
    table.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return {"lm": english, "classify": table}


# Clipping off: the averaged gradient reaches Adam's moments as it is, so a sum (N× larger) shows
# in them; a clip that always bites checks that the average is clipped, not each micro-batch. The
# language model compiles with XLA (its default) once.
@pytest.mark.parametrize("task, clip, jit_compile", [("lm", 0.0, True), ("classify", 0.0, False), ("lm", 0.05, False)])
def test_one_accumulated_step_equals_one_step_on_the_larger_batch(tmp_path, texts, task, clip, jit_compile):
    from keraslm.training import load_trained_model

    runs = {}
    for batch_size, grad_accum_steps in ((16, 1), (4, 4)):
        work_dir = tmp_path / f"{batch_size}x{grad_accum_steps}"
        result = _train(
            task, texts[task], work_dir, batch_size=batch_size, grad_accum_steps=grad_accum_steps, gradient_clip_norm=clip,
            jit_compile=jit_compile, **STEP
        )
        assert result.step == 1
        weights = {weight.path: weight.numpy() for weight in load_trained_model(str(work_dir)).model.weights}
        log = json.loads((work_dir / "metrics.json").read_text())["evaluations"]
        runs[grad_accum_steps] = weights, _checkpoint(work_dir), log
    (weights, state, log), (accumulated_weights, accumulated_state, accumulated_log) = runs[1], runs[4]
    assert sorted(accumulated_weights) == sorted(weights) and sorted(accumulated_state) == sorted(state)
    # Adam's moments hold the (clipped) gradient itself: a sum instead of an average is N× off.
    moments = [name for name in state if name.startswith("optimizer/_variables/")]
    assert len(moments) == 2 * len(weights)
    for name in moments:
        np.testing.assert_allclose(accumulated_state[name], state[name], rtol=1e-3, atol=1e-7, err_msg=name)
    for name, value in weights.items():
        if name.endswith("key/bias"):
            # Its gradient is zero in exact arithmetic (softmax ignores a shift shared by every
            # key), so Adam, which divides by the gradient's size, steps on rounding noise.
            continue
        # One step of lr 1e-2 moves a weight by up to 1e-2: applying N updates, or decaying N
        # times, is off by 1e-3 or more; summing in another order, by below 1e-6.
        np.testing.assert_allclose(accumulated_weights[name], value, atol=2e-5, err_msg=name)
    # The optimizer counted one step (the learning-rate schedule reads it), not N.
    assert int(accumulated_state[ITERATIONS]) == int(state[ITERATIONS]) == 1
    assert accumulated_log[0]["train_loss"] == pytest.approx(log[0]["train_loss"], abs=1e-5)
    assert accumulated_log[0]["val_loss"] == pytest.approx(log[0]["val_loss"], abs=1e-5)


def test_an_accumulating_run_counts_optimizer_steps_and_resumes_as_if_uninterrupted(tmp_path, texts, capsys):
    settings = {"eval_interval": 2, "eval_steps": 2, "warmup_steps": 1, "learning_rate": 3e-3, "seed": 3, "jit_compile": False}
    reference = _train("lm", texts["lm"], tmp_path / "reference", batch_size=8, grad_accum_steps=2, train_steps=4, **settings)
    expected = json.loads((tmp_path / "reference" / "metrics.json").read_text())["evaluations"]
    assert reference.step == 4 and [record["step"] for record in expected] == [2, 4]
    assert int(_checkpoint(tmp_path / "reference")[ITERATIONS]) == 4
    # ms_per_step and tokens/s are per optimizer step: 8 × 2 windows of 16 tokens each.
    record = expected[-1]
    assert record["tokens_per_second"] == pytest.approx(16 * 16 * 1000 / record["ms_per_step"], rel=1e-6)

    # Resumed with the same split, and with another split of the same 16 windows per step
    # (on less memory, say): both go on as the uninterrupted run, and say nothing about it.
    for first, second in (((8, 2), (8, 2)), ((16, 1), (4, 4))):
        work_dir = tmp_path / f"resumed-{first[0]}x{first[1]}"
        _train("lm", texts["lm"], work_dir, batch_size=first[0], grad_accum_steps=first[1], train_steps=2, **settings)
        capsys.readouterr()
        assert _train("lm", texts["lm"], work_dir, batch_size=second[0], grad_accum_steps=second[1], train_steps=4, **settings).step == 4
        assert "note" not in capsys.readouterr().err
        resumed = json.loads((work_dir / "metrics.json").read_text())["evaluations"]
        assert [record["step"] for record in resumed] == [2, 4]
        assert resumed[-1]["val_loss"] == pytest.approx(expected[-1]["val_loss"], abs=1e-4)
        assert json.loads((work_dir / "config.json").read_text())["train"]["grad_accum_steps"] == second[1]

    # Another effective batch reads other windows from the step it resumes at: allowed, and said.
    _train("lm", texts["lm"], tmp_path / "reference", batch_size=8, grad_accum_steps=4, train_steps=6, **settings)
    note = capsys.readouterr().err.strip().splitlines()
    assert note == [
        f"keraslm: note: resuming --work_dir={tmp_path / 'reference'} at step 4 with 32 examples per optimizer step "
        "(--batch_size=8 × --grad_accum_steps=4), was 16 (8 × 2): from here on it reads other batches than the run "
        "would have"
    ]


def test_a_batch_that_cannot_split_into_equal_micro_batches_is_refused(tmp_path, texts):
    from keraslm.errors import InvalidInputError

    lines = texts["classify"].read_text(encoding="utf-8").splitlines()
    small = tmp_path / "small.csv"
    small.write_text("\n".join(lines[:26]) + "\n", encoding="utf-8")
    # 25 examples, no held-out split: a step of 16 × 2 is cut to 25, which 2 micro-batches cannot share.
    with pytest.raises(InvalidInputError) as raised:
        _train("classify", small, tmp_path / "run", batch_size=16, grad_accum_steps=2, valid_data=str(small), **STEP)
    assert str(raised.value) == (
        "--batch_size=16 × --grad_accum_steps=2 asks for 32 examples per optimizer step, but the training set has only "
        "25, which does not split into 2 equal micro-batches; lower --batch_size or --grad_accum_steps"
    )


@pytest.mark.parametrize("value", [0, -2])
def test_grad_accum_steps_below_one_is_refused(value):
    from keraslm.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=f"^--grad_accum_steps={value} must be at least 1$"):
        _config("lm", "x.txt", grad_accum_steps=value).validate()


def test_grad_accum_steps_zero_is_one_line_on_the_command_line(tmp_path, texts):
    completed = run_cli("train", f"--train_data={texts['lm']}", f"--work_dir={tmp_path / 'run'}", "--grad_accum_steps=0")
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "--grad_accum_steps=0 must be at least 1" in lines[0], completed.stderr
    assert not (tmp_path / "run").exists()


def test_accumulation_under_mirrored_strategy_and_mixed_float16(texts):
    """Keras' own gradient_accumulation_steps fails to trace under MirroredStrategy; this step
    must run there (two CPU replicas) and match the larger batch, and run under mixed_float16.

    Without XLA, which cannot run a step over several devices (--strategy refuses it). A clip that
    always bites: the averaged gradient, summed over replicas, is what is clipped.
    """
    code = """
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keraslm import training
from keraslm.config import ModelConfig, RunConfig, TrainConfig

def step(policy, strategy, batch_size, grad_accum_steps, batch):
    config = RunConfig(
        task="lm", model=ModelConfig(vocabulary_size=40, sequence_length=16, num_layers=1, num_heads=2, hidden_dim=16),
        train=TrainConfig(train_data="x", batch_size=batch_size, grad_accum_steps=grad_accum_steps, train_steps=2,
                          warmup_steps=0, learning_rate=1e-2, gradient_clip_norm=0.05, mixed_precision=policy,
                          jit_compile=False),
    )
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = training.build_compiled_model(config)
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=1, steps_per_epoch=2, verbose=0)
    return {weight.path: weight.numpy() for weight in model.weights}, history.history["loss"][-1], int(model.optimizer.iterations.numpy())

ids = np.random.default_rng(0).integers(2, 40, size=(16, 17)).astype("int32")
batch = (ids[:, :-1], ids[:, 1:])
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
larger, accumulated = step("none", mirrored, 16, 1, batch), step("none", mirrored, 4, 4, batch)
# The key bias steps on rounding noise (see test_one_accumulated_step_equals_one_step_on_the_larger_batch).
difference = {name: float(np.abs(value - accumulated[0][name]).max()) for name, value in larger[0].items() if not name.endswith("key/bias")}
mixed = step("mixed_float16", tf.distribute.get_strategy(), 4, 4, batch)
print(json.dumps({"difference": difference, "losses": [larger[1], accumulated[1]], "iterations": accumulated[2],
                  "mixed_loss": mixed[1], "mixed_finite": bool(all(np.isfinite(w).all() for w in mixed[0].values()))}))
"""
    result = run_fresh_python(code)
    assert len(result["difference"]) > 10 and max(result["difference"].values()) < 2e-5, result["difference"]
    assert result["losses"][1] == pytest.approx(result["losses"][0], abs=1e-5)
    assert result["iterations"] == 2
    assert np.isfinite(result["mixed_loss"]) and result["mixed_finite"]
