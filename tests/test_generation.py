"""Sampling and the decoding loop: per-row determinism, and incremental steps equal full passes."""

import numpy as np
import pytest
import tensorflow as tf

from keraslm.config import ModelConfig
from keraslm.generation import generate_tokens, sample_next_token, uniform_noise
from keraslm.models import build_model, make_stepper


def test_temperature_zero_is_argmax_and_never_special_tokens():
    logits = tf.constant([[9.0, 8.0, 1.0, 3.0, 2.0], [0.0, 0.0, 5.0, 1.0, 7.0]])
    tokens = sample_next_token(logits, tf.constant([0.0, 0.0]), tf.constant([1, 2], tf.int64), 5)
    assert tokens.numpy().tolist() == [3, 4]  # ids 0 and 1 are [PAD] and [UNK]


def test_samples_follow_the_softmax():
    logits = np.log(np.array([1e-9, 1e-9, 0.5, 0.3, 0.2], np.float32))
    batch = tf.constant(np.tile(logits, (4000, 1)))
    seeds = tf.range(4000, dtype=tf.int64)
    tokens = sample_next_token(batch, tf.ones([4000]), seeds, 0).numpy()
    frequencies = np.bincount(tokens, minlength=5) / 4000
    np.testing.assert_allclose(frequencies[2:], [0.5, 0.3, 0.2], atol=0.03)
    assert frequencies[:2].sum() == 0


def test_noise_depends_only_on_seed_position_and_token():
    a = uniform_noise(tf.constant([11, 12], tf.int64), 3, 50).numpy()
    b = uniform_noise(tf.constant([12], tf.int64), 3, 50).numpy()
    np.testing.assert_array_equal(a[1], b[0])
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], uniform_noise(tf.constant([11], tf.int64), 4, 50).numpy()[0])
    assert 0.0 < a.min() and a.max() < 1.0


@pytest.fixture(scope="module", params=["transformer", "lstm"])
def model_and_config(request):
    tf.keras.utils.set_random_seed(3)
    config = ModelConfig(
        model=request.param, vocabulary_size=23, sequence_length=8, hidden_dim=16, num_layers=2, num_heads=2
    )
    return build_model(config), config


def test_steps_give_the_logits_of_a_full_forward_pass(model_and_config):
    model, config = model_and_config
    stepper = make_stepper(model, config)
    tokens = tf.constant(np.random.default_rng(1).integers(2, 23, (3, 14)), tf.int32)
    start = 4
    state = stepper.initial_state(tokens, tf.constant(start))
    for position in range(start, 14):
        logits, state = stepper.step(state, tokens, tf.constant(position))
        # The reference: the Keras model on the whole visible context (the last S tokens for the
        # Transformer, everything for the LSTM).
        first = max(0, position - config.sequence_length) if config.model == "transformer" else 0
        expected = model(tokens[:, first:position])[:, -1, :]
        np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-4)


def test_rows_are_independent_of_their_batch(model_and_config):
    model, config = model_and_config
    stepper = make_stepper(model, config)
    prompts = tf.ragged.constant([[5, 6, 7], [9], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]], tf.int32)
    max_new = tf.constant([12, 4, 7])
    temperature = tf.constant([0.0, 1.0, 0.7])
    seeds = tf.constant([1, 2, 3], tf.int64)
    together = generate_tokens(stepper, prompts, max_new, temperature, seeds).to_list()
    assert [len(row) for row in together] == [12, 4, 7]
    for row in range(3):
        alone = generate_tokens(stepper, prompts[row : row + 1], max_new[row : row + 1], temperature[row : row + 1], seeds[row : row + 1])
        assert alone.to_list()[0] == together[row]
    again = generate_tokens(stepper, prompts, max_new, temperature, seeds).to_list()
    assert again == together
    other_seeds = generate_tokens(stepper, prompts, max_new, temperature, seeds + 100).to_list()
    assert other_seeds[0] == together[0]  # greedy row
    assert other_seeds[1:] != together[1:]
