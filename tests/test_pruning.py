"""--prune_sparsity: each pruned tensor reaches the requested share of zeros on schedule, keeps it after
the ramp, through a resume and in the export, and a fine-tuned backbone reaches it too."""

import csv
import random
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from keraslm import checkpoints, pruning, run_log, training
from keraslm.config import ModelConfig, RunConfig, TokenizerConfig, TrainConfig
from keraslm.errors import InvalidInputError
from keraslm.export import export_from_work_dir

TINY = dict(model="transformer", sequence_length=16, num_layers=1, num_heads=2, hidden_dim=32)


def _config(train_data, task="lm", **train_settings):
    settings = dict(
        train_data=str(train_data), batch_size=16, train_steps=40, eval_interval=10, eval_steps=2, learning_rate=3e-3,
        seed=7, jit_compile=False,  # XLA's compilation would cost more than these few steps.
    )
    settings.update(train_settings)
    return RunConfig(task=task, tokenizer=TokenizerConfig(tokenizer="char"), model=ModelConfig(**TINY), train=TrainConfig(**settings))


def _pruned_values(work_dir, step=None):
    """{path: values} of the prunable weights restored from the run's newest checkpoint (or ckpt-<step>)."""
    trained = training.load_trained_model(str(work_dir))
    if step is not None:
        backbone, head = training.split_model(trained.model)
        tf.train.Checkpoint(backbone=backbone, head=head).restore(str(work_dir / "checkpoints" / f"ckpt-{step}")).expect_partial()
    return {weight.path: weight.numpy() for weight in pruning.prunable_weights(trained.model)}


def _assert_each_tensor_sparse(values, sparsity):
    assert values
    for path, array in values.items():
        assert np.count_nonzero(array == 0) == round(sparsity * array.size), path


# === Schedule and masks ===


def test_schedule_is_a_cubic_ramp_updated_every_frequency_steps_and_at_its_end():
    train = TrainConfig(train_data="x", train_steps=100, prune_sparsity=0.8, prune_begin_step=10, prune_end_step=40, prune_frequency=7)
    assert pruning.sparsity_at(train, 0) == pruning.sparsity_at(train, 10) == 0.0
    # TF-MOT's PolynomialDecay(power=3): target × (1 - (1 - progress)^3).
    assert pruning.sparsity_at(train, 25) == pytest.approx(0.8 * (1 - 0.5**3))
    assert pruning.sparsity_at(train, 40) == pruning.sparsity_at(train, 100) == pytest.approx(0.8)
    updates = sorted({pruning.last_update_step(train, step) for step in range(101)} - {None})
    # 40 is not 10 + a multiple of 7: the ramp's end is an update of its own, after which masks are fixed.
    assert updates == [10, 17, 24, 31, 38, 40]
    assert pruning.last_update_step(train, 9) is None and pruning.last_update_step(train, 30) == 24
    assert TrainConfig(train_steps=1000).resolved_prune_end_step() == 750


def test_magnitude_mask_zeroes_exactly_the_smallest_weights_even_among_ties():
    values = np.array([[0.5, -0.1, 0.0], [0.0, 2.0, -0.3]], np.float32)
    np.testing.assert_array_equal(pruning.magnitude_mask(values, 0.5), [[1, 0, 0], [0, 1, 1]])
    ties = np.zeros((4, 5), np.float32)
    assert np.count_nonzero(pruning.magnitude_mask(ties, 0.3) == 0) == 6


def test_kernels_and_token_embeddings_are_pruned_never_biases_norms_or_positions():
    config = _config("x", task="classify")
    config.model.vocabulary_size, config.labels = 40, ["neg", "pos"]
    model = training.build_compiled_model(config)
    names = [weight.path for weight in pruning.prunable_weights(model)]
    assert "embedding/token_embedding/embeddings" in names and "classifier/kernel" in names
    assert any(name.endswith("query/kernel") for name in names)
    assert not [name for name in names if "bias" in name or "norm" in name or "position" in name]


def test_masks_are_applied_again_after_every_optimizer_step():
    """Adam's momentum and weight decay move a pruned weight at each step unless the mask follows it."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0.1), loss="mse", steps_per_execution=3)
    train = TrainConfig(train_data="x", train_steps=20, prune_sparsity=0.5, prune_end_step=1)
    pruner = pruning.Pruner(model, train)
    pruner.start(1)  # Past the ramp: the masks are final.
    x, y = np.random.rand(64, 8).astype("float32"), np.random.rand(64, 1).astype("float32")
    zeros = [weight.numpy() == 0 for weight in pruner.pruned_weights]
    assert [mask.mean() for mask in zeros] == [0.5, 0.5]
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[pruner])
    for weight, mask in zip(pruner.pruned_weights, zeros):
        np.testing.assert_array_equal(weight.numpy() == 0, mask)
    # Without the masks, the same steps do move those weights: the check above has teeth.
    for weight in pruner.pruned_weights:
        weight.constraint = None
    model.make_train_function(force=True)  # The step reads the constraints when it is traced.
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(not (weight.numpy()[mask] == 0).all() for weight, mask in zip(pruner.pruned_weights, zeros))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(prune_sparsity=1.0), "--prune_sparsity=1.0 must be in [0, 1)"),
        (dict(prune_sparsity=float("nan")), "--prune_sparsity=nan must be a finite number"),
        (dict(prune_end_step=50), "--prune_end_step=50 needs --prune_sparsity"),
        (dict(prune_sparsity=0.5, prune_frequency=0), "--prune_frequency=0 must be at least 1"),
        (dict(prune_sparsity=0.5, prune_begin_step=30, prune_end_step=30), "--prune_end_step=30 must be after --prune_begin_step=30"),
        (dict(prune_sparsity=0.5, prune_end_step=101), "--prune_end_step=101 must be after"),
        (dict(prune_sparsity=0.5, train_steps=1), "--prune_end_step=-1 (3/4 of --train_steps: 0) must be after"),
    ],
)
def test_bad_pruning_settings_name_their_flag(settings, message):
    settings = {"train_steps": 100, **settings}
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        TrainConfig(train_data="x", **settings).validate()


# === Training, resume, export, fine-tuning ===


@pytest.fixture(scope="module")
def english(tmp_path_factory, corpora):
    path = tmp_path_factory.mktemp("pruning") / "english.txt"
    path.write_text(corpora["english"].read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


# Ramp from step 5 to 30, masks every 7 steps (5, 12, 19, 26, and 30); evaluations every 10 steps.
SCHEDULE = dict(prune_sparsity=0.75, prune_begin_step=5, prune_end_step=30, prune_frequency=7)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, english):
    work_dir = tmp_path_factory.mktemp("pruned") / "run"
    result = training.train(_config(english, **SCHEDULE), str(work_dir), verbose=False)
    assert result.step == 40
    return work_dir


def test_training_reaches_the_sparsity_on_schedule_and_keeps_it_after_the_ramp(pruned_run):
    records = run_log.load_records(str(pruned_run))
    train = _config("x", **SCHEDULE).train
    # At step 10 the masks are those of step 5's update (sparsity 0); at 20 those of step 19's.
    assert [record["sparsity"] for record in records] == pytest.approx(
        [0.0, pruning.sparsity_at(train, 19), 0.75, 0.75], abs=0.002
    )
    at_end_of_ramp, final = _pruned_values(pruned_run, step=30), _pruned_values(pruned_run)
    _assert_each_tensor_sparse(at_end_of_ramp, 0.75)
    _assert_each_tensor_sparse(final, 0.75)
    # Ten more optimizer steps after the ramp moved the kept weights but revived none of the pruned.
    for path, values in final.items():
        np.testing.assert_array_equal(values == 0, at_end_of_ramp[path] == 0, err_msg=path)
    assert any(not np.array_equal(values, at_end_of_ramp[path]) for path, values in final.items())


def test_a_run_resumed_mid_ramp_ends_as_the_uninterrupted_one(pruned_run, tmp_path, english):
    # As if killed after step 20's checkpoint: between the updates of steps 19 and 26.
    resumed = tmp_path / "resumed"
    shutil.copytree(pruned_run, resumed)
    for step in (30, 40):
        for path in (resumed / "checkpoints").glob(f"ckpt-{step}.*"):
            path.unlink()
    checkpoints.rewrite_index(str(resumed / "checkpoints"), str(resumed / "checkpoints" / "ckpt-20"))
    result = training.train(_config(english, **SCHEDULE), str(resumed), verbose=False)
    assert result.steps_run == 20
    expected, final = _pruned_values(pruned_run), _pruned_values(resumed)
    _assert_each_tensor_sparse(final, 0.75)
    for path, values in final.items():
        np.testing.assert_array_equal(values == 0, expected[path] == 0, err_msg=path)
        np.testing.assert_allclose(values, expected[path], atol=1e-5, err_msg=path)


def test_gradient_accumulation_and_several_steps_per_execution_reach_the_same_sparsity(tmp_path, english):
    # Executions of 3 steps end at 3, 6, ..., so the update due at 5 comes at 6, and so on; the
    # ramp's end (30) is an execution's end, after which nothing changes the masks.
    config = _config(english, train_steps=33, grad_accum_steps=2, steps_per_execution=3, eval_interval=33, **SCHEDULE)
    training.train(config, str(tmp_path / "run"), verbose=False)
    _assert_each_tensor_sparse(_pruned_values(tmp_path / "run"), 0.75)


def _write_reviews(path, count, seed):
    generator = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        for index in range(count):
            label = "pos" if index % 2 else "neg"
            word = generator.choice(["good", "fine", "lovely"] if label == "pos" else ["bad", "poor", "awful"])
            writer.writerow([f"the {word} play, my lord", label])


def test_a_classifier_fine_tuned_from_a_pretraining_run_reaches_the_sparsity_in_its_export(tmp_path, pruned_run):
    reviews = tmp_path / "reviews.csv"
    _write_reviews(reviews, 200, seed=3)
    config = _config(
        reviews, task="classify", init_from=str(pruned_run), train_steps=20, eval_interval=20, prune_sparsity=0.5,
        prune_end_step=10, prune_frequency=5,
    )
    config.model = ModelConfig()  # The pretraining run's model settings are adopted.
    work_dir = tmp_path / "fine_tuned"
    training.train(config, str(work_dir), verbose=False)
    values = _pruned_values(work_dir)
    assert any(path.startswith("embedding/") for path in values)
    _assert_each_tensor_sparse(values, 0.5)

    # The export holds the same weights, zeros included.
    version = export_from_work_dir(str(work_dir), str(tmp_path / "export"), verbose=False)
    reader = tf.train.load_checkpoint(f"{version}/variables/variables")
    exported = [reader.get_tensor(name) for name, shape in reader.get_variable_to_shape_map().items() if len(shape) >= 2]
    for path, array in values.items():
        assert any(other.shape == array.shape and np.array_equal(other, array) for other in exported), path
