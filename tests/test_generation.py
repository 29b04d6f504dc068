"""Sampling, stop strings and the decoding loop: per-row determinism, caches equal full passes."""

import numpy as np
import pytest
import tensorflow as tf

from keraslm.config import ModelConfig, RunConfig
from keraslm.generation import (
    SMALL_BATCH,
    VARIANTS,
    Controls,
    choose_variant,
    cut_at_stop,
    filter_top_k_top_p,
    find_first,
    generate_tokens,
    is_plain,
    sample_next_token,
    uniform_noise,
)
from keraslm.steppers import make_stepper
from keraslm.tasks import build_model


def controls(batch_size, **values):
    defaults = dict(max_new_tokens=10, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0, stop="")
    defaults.update(values)
    dtypes = dict(max_new_tokens=tf.int32, top_k=tf.int32, seed=tf.int64, stop=tf.string)
    tensors = {}
    for name, value in defaults.items():
        dtype = dtypes.get(name, tf.float32)
        value = value if isinstance(value, (list, tuple)) else [value] * batch_size
        tensors[name] = tf.constant(value, dtype)
    return Controls(**tensors)


def test_temperature_zero_is_argmax_and_never_special_tokens():
    logits = tf.constant([[9.0, 8.0, 1.0, 3.0, 2.0], [0.0, 0.0, 5.0, 1.0, 7.0]])
    tokens = sample_next_token(logits, controls(2, temperature=0.0, seed=[1, 2]), 5)
    assert tokens.numpy().tolist() == [3, 4]  # ids 0 and 1 are [PAD] and [UNK]


def test_samples_follow_the_softmax():
    logits = np.log(np.array([1e-9, 1e-9, 0.5, 0.3, 0.2], np.float32))
    batch = tf.constant(np.tile(logits, (4000, 1)))
    tokens = sample_next_token(batch, controls(4000, seed=list(range(4000))), 0).numpy()
    frequencies = np.bincount(tokens, minlength=5) / 4000
    np.testing.assert_allclose(frequencies[2:], [0.5, 0.3, 0.2], atol=0.03)


def test_top_k_and_top_p_keep_only_the_head_of_the_distribution():
    logits = tf.math.log(tf.constant([[0.4, 0.3, 0.2, 0.1]] * 4))
    kept = filter_top_k_top_p(logits, tf.constant([0, 2, 0, 1]), tf.constant([1.0, 1.0, 0.65, 1.0])).numpy() > -1e30
    assert kept.tolist() == [
        [True, True, True, True],  # neither: untouched
        [True, True, False, False],  # top-2
        [True, True, False, False],  # 0.4 + 0.3 reaches 0.65
        [True, False, False, False],  # top-1
    ]
    batch = tf.constant(np.tile(np.log([1e-9, 1e-9, 0.4, 0.35, 0.25]).astype(np.float32), (3000, 1)))
    seeds = list(range(3000))
    greedy = sample_next_token(batch, controls(3000, temperature=0.0, seed=seeds), 0).numpy()
    top_1 = sample_next_token(batch, controls(3000, top_k=1, seed=seeds), 0).numpy()
    np.testing.assert_array_equal(top_1, greedy)
    top_2 = sample_next_token(batch, controls(3000, top_k=2, seed=seeds), 0).numpy()
    assert set(top_2) == {2, 3}


def test_repetition_penalty_pushes_seen_tokens_down():
    logits = tf.constant([[0.0, 0.0, 2.0, 1.9, -1.0]])
    seen = tf.constant([[False, False, True, False, False]])
    assert sample_next_token(logits, controls(1, temperature=0.0), 0, seen=seen).numpy()[0] == 2
    penalized = sample_next_token(logits, controls(1, temperature=0.0, repetition_penalty=1.5), 0, seen=seen)
    assert penalized.numpy()[0] == 3


def test_noise_depends_only_on_seed_position_and_token():
    a = uniform_noise(tf.constant([11, 12], tf.int64), [3], 50).numpy()[0]
    b = uniform_noise(tf.constant([12], tf.int64), [3], 50).numpy()[0]
    np.testing.assert_array_equal(a[1], b[0])
    assert not np.array_equal(a[0], a[1])
    block = uniform_noise(tf.constant([11, 12], tf.int64), [2, 3, 4], 50).numpy()
    np.testing.assert_array_equal(block[1], a)  # a block of positions = positions one at a time
    assert not np.array_equal(a[0], block[2][0])
    assert 0.0 < block.min() and block.max() < 1.0


def test_find_first_and_cut_at_stop():
    texts = tf.constant(["hello world", "no match", "abcabc", "今天天气很好", "x", ""])
    stops = tf.constant(["o w", "zz", "ca", "天气", "", "a"])
    assert find_first(texts, stops).numpy().tolist() == [4, -1, 2, 6, -1, -1]
    cut = [text.decode() for text in cut_at_stop(texts, stops).numpy()]
    assert cut == ["hell", "no match", "ab", "今天", "x", ""]


@pytest.fixture(scope="module", params=["transformer", "lstm"])
def model_and_config(request):
    tf.keras.utils.set_random_seed(3)
    config = ModelConfig(
        model=request.param, vocabulary_size=23, sequence_length=8, hidden_dim=16, num_layers=2, num_heads=2
    )
    return build_model(RunConfig(model=config)), config


def test_cached_steps_give_the_logits_of_a_full_forward_pass(model_and_config):
    """The Transformer's cache slides by keeping the last sequence_length // 4 tokens."""
    model, config = model_and_config
    stepper = make_stepper(model, config)
    tokens = tf.constant(np.random.default_rng(1).integers(2, 23, (3, 30)), tf.int32)
    for start in (1, 4, 12):
        state = stepper.initial_state(tokens, tf.constant(start))
        for position in range(start, 30):
            logits, state = stepper.step(state, tokens, tf.constant(position))
            if config.model == "transformer":
                # S = 8, keep 2: windows start at 0, then jump by 6 each time the cache fills,
                # so the token at 8 + 6k .. 8 + 6k + 5 sits in the window starting at 6 (k + 1).
                current = position - 1
                window_start = 0 if current < 8 else 6 * ((current - 8) // 6 + 1)
                context = tokens[:, window_start:position]
            else:
                context = tokens[:, :position]  # the LSTM carries everything
            expected = model(context)[:, -1, :]
            np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-4, err_msg=f"{start=} {position=}")
    # The small-batch arithmetic gives the same logits.
    state = stepper.initial_state(tokens, tf.constant(5))
    for position in range(5, 20):
        small, _ = stepper.step(state, tokens, tf.constant(position), small_batch=True)
        logits, state = stepper.step(state, tokens, tf.constant(position))
        np.testing.assert_allclose(small.numpy(), logits.numpy(), atol=1e-5)


def _generate(stepper, prompts, variant=None, **values):
    prompts = tf.ragged.constant(prompts, tf.int32)
    count = int(prompts.nrows())

    def detokenize(ids):  # ids as text, to exercise stop strings: token 5 -> "5,"
        strings = tf.strings.as_string(ids)
        return tf.strings.reduce_join(tf.where(ids > 0, tf.strings.join([strings, ","]), ""), axis=-1)

    ids, num_tokens = generate_tokens(stepper, prompts, controls(count, **values), detokenize, variant=variant)
    return ids.to_list(), num_tokens.numpy().tolist()


def test_each_loop_variant_alone_gives_what_the_automatic_choice_gives(model_and_config):
    """The export's generate_<variant> functions run one variant; `generate` picks among all."""
    model, config = model_and_config
    stepper = make_stepper(model, config)
    cases = [
        ([[5, 6, 7], [9]], dict(max_new_tokens=[9, 5], temperature=[0.0, 0.9], seed=[1, 2])),
        ([[5, 6]] * (SMALL_BATCH + 1), dict(max_new_tokens=6, temperature=1.0, seed=list(range(SMALL_BATCH + 1)))),
        ([[5, 6, 7], [9]], dict(max_new_tokens=7, temperature=1.0, top_k=[0, 3], repetition_penalty=[1.2, 1.0], seed=[3, 4])),
    ]
    for prompts, values in cases:
        chosen = choose_variant(bool(is_plain(controls(len(prompts), **values))), len(prompts))
        automatic = _generate(stepper, prompts, **values)
        assert _generate(stepper, prompts, variant=chosen, **values) == automatic, chosen
    assert [choose_variant(bool(is_plain(controls(len(p), **v))), len(p)) for p, v in cases] == list(VARIANTS)


def test_the_python_api_picks_the_variant_the_graph_picks():
    """keraslm.inference restates choose_variant on numpy inputs (it must not import this module)."""
    from keraslm import inference

    assert inference.SMALL_BATCH == SMALL_BATCH
    for batch_size in (1, SMALL_BATCH, SMALL_BATCH + 1):
        for values in (
            dict(),
            dict(top_k=2),
            dict(top_p=0.9),
            dict(top_p=1.0 + 1e-9),  # rounds to 1.0 in float32, as the graph sees it
            dict(repetition_penalty=1.1),
            dict(stop="ab"),
            dict(stop=[""] * (batch_size - 1) + ["x"]),
        ):
            tensors = controls(batch_size, **values)
            arrays = {name: value.numpy() for name, value in tensors._asdict().items()}
            expected = choose_variant(bool(is_plain(tensors)), batch_size)
            assert inference._variant(arrays, batch_size) == expected, (batch_size, values)


def test_cached_decoding_gives_the_greedy_tokens_of_full_recompute(model_and_config):
    model, config = model_and_config
    # Long prompts and slides are checked step by step above; here rows of mixed lengths.
    prompts = [[5, 6, 7], [9], [3, 4, 5, 6, 7, 8]]
    cached, _ = _generate(make_stepper(model, config), prompts, max_new_tokens=[30, 4, 20], temperature=0.0)
    recomputed, _ = _generate(
        make_stepper(model, config, kv_cache=False), prompts, max_new_tokens=[30, 4, 20], temperature=0.0
    )
    if config.model == "transformer":
        # Recompute always sees the last sequence_length tokens; once the cache is full it slides
        # and keeps sequence_length // 4 (checked step by step above). Up to position
        # sequence_length both see the same context.
        cached = [row[: max(0, config.sequence_length + 1 - len(prompt))] for row, prompt in zip(cached, prompts)]
        recomputed = [row[: len(cached_row)] for row, cached_row in zip(recomputed, cached)]
        assert [len(row) for row in cached] == [6, 4, 3]
    assert cached == recomputed


def test_rows_are_independent_of_their_batch(model_and_config):
    model, config = model_and_config
    stepper = make_stepper(model, config)
    prompts = [[5, 6, 7], [9], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
    settings = dict(
        max_new_tokens=[12, 4, 7],
        temperature=[0.0, 1.0, 0.7],
        top_k=[0, 3, 0],
        top_p=[1.0, 1.0, 0.8],
        repetition_penalty=[1.0, 1.3, 1.0],
        seed=[1, 2, 3],
    )
    together, counts = _generate(stepper, prompts, **settings)
    assert counts == [12, 4, 7] and [len(row) for row in together] == counts
    for row in range(3):
        alone, _ = _generate(stepper, prompts[row : row + 1], **{name: value[row : row + 1] for name, value in settings.items()})
        assert alone[0] == together[row]
    assert _generate(stepper, prompts, **settings)[0] == together
    other_seeds, _ = _generate(stepper, prompts, **{**settings, "seed": [101, 102, 103]})
    assert other_seeds[0] == together[0]  # the greedy row
    assert other_seeds[1:] != together[1:]


def test_stop_string_ends_a_row_early(model_and_config):
    model, config = model_and_config
    stepper = make_stepper(model, config)
    free, _ = _generate(stepper, [[5, 6], [5, 6]], max_new_tokens=20, temperature=1.0, seed=4)
    target = f"{free[0][2]},"  # the text of the row's third new token
    stopped, counts = _generate(stepper, [[5, 6], [5, 6]], max_new_tokens=20, temperature=1.0, seed=4, stop=[target, ""])
    # The row stops at the first token after which its text contains the stop string
    # ("2," also occurs inside "12,").
    texts = ["".join(f"{token}," for token in free[0][: count + 1]) for count in range(20)]
    first = next(index for index, text in enumerate(texts) if target in text)
    assert counts == [first + 1, 20]
    assert stopped[0] == free[0][: first + 1] and stopped[1] == free[1]


def test_score_windows_cover_each_row_with_its_own_tokens_only():
    """Windows of S + 1 tokens, stride S, [PAD] past a row's end (never the next row's tokens)."""
    from keraslm.scoring import text_windows
    from keraslm.tokenizers import PAD_ID

    rng = np.random.default_rng(0)
    for sequence_length in (1, 4, 16):
        rows = [rng.integers(PAD_ID + 2, 60, size=size).tolist() for size in (0, 1, 5, 17, 40)]
        windows, lengths, owners = (
            tensor.numpy() for tensor in text_windows(tf.ragged.constant(rows, dtype=tf.int32), sequence_length)
        )
        expected = []
        for row, ids in enumerate(rows):
            for start in range(0, max(len(ids) - 1, 0), sequence_length):
                window = ids[start : start + sequence_length + 1]
                expected.append((row, len(window), window + [PAD_ID] * (sequence_length + 1 - len(window))))
        assert [(owner, length, window.tolist()) for owner, length, window in zip(owners, lengths, windows)] == expected
