"""Seq2seq decoding on toy models: greedy, seeded sampling and beam search against plain numpy.

The toy steppers are tables, not Keras models: a Markov table (logits of the next token given the
last one) and a "history" model whose logits are a hash of the whole hypothesis so far, carried
in the state, so a decoder that forgot to reorder the state would see the wrong logits.
"""

import numpy as np
import pytest
import tensorflow as tf

from keraslm.seq2seq_decoding import decode

PAD, START, END = 0, 1, 2
BANNED = (PAD, START)


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max()
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.exp(shifted).sum())


def penalty(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


# === Toy models ===


def markov_step(table):
    """A step whose logits depend only on the last token; the state counts steps."""
    table = tf.constant(table, tf.float32)

    def step(state, token_ids, index):
        return tf.gather(table, token_ids), state + 1

    return step


def table_from_probabilities(rows, vocabulary_size):
    """A Markov table of logits = log p; `rows` maps a previous token to {next token: p}."""
    table = np.full((vocabulary_size, vocabulary_size), -1e9, np.float32)
    for previous, probabilities in rows.items():
        for token, probability in probabilities.items():
            table[previous, token] = np.log(probability)
    return table


# The history model: state = a running hash of the row's source and every token so far.
HASH_MODULUS = 1_000_003
TABLE_SIZE = 10_007


def hash_update(hashes, tokens):
    return (hashes * 131 + tokens + 7) % HASH_MODULUS


def history_step(vocabulary_size, end_bias=0.0, seed=0):
    table = np.random.default_rng(seed).normal(size=TABLE_SIZE).astype(np.float32) * 2.5
    bias = np.zeros(vocabulary_size, np.float32)
    bias[END] = end_bias

    def step(state, token_ids, index):
        hashes = hash_update(state["hash"], tf.cast(token_ids, tf.int64))  # (N,)
        where = (hashes[:, None] * 17 + tf.range(vocabulary_size, dtype=tf.int64)[None, :]) % TABLE_SIZE
        logits = tf.gather(tf.constant(table), where) + bias  # (N, V)
        return logits, {"hash": hashes, "steps": state["steps"] + 1}

    def reference_logits(row_hash, history):
        hashes = row_hash
        for token in history:
            hashes = hash_update(hashes, token)
        return table[(hashes * 17 + np.arange(vocabulary_size)) % TABLE_SIZE].astype(np.float64) + bias

    return step, reference_logits


def history_state(row_hashes):
    row_hashes = tf.constant(row_hashes, tf.int64)
    return {"hash": row_hashes, "steps": tf.zeros_like(row_hashes, tf.int32)}


# === Numpy references ===


def reference_greedy(logits_fn, max_new_tokens):
    history, score = [START], 0.0
    for _ in range(max_new_tokens):
        logits = logits_fn(history)
        logp = log_softmax(logits)
        allowed = np.where(np.isin(np.arange(len(logits)), BANNED), -np.inf, logits)
        token = int(np.argmax(allowed))
        score += logp[token]
        if token == END:
            return history[1:], score
        history.append(token)
    return history[1:], score


def reference_beam(logits_fn, num_beams, max_new_tokens, alpha):
    """tensor2tensor's beam search as the module documents it, list by list, never stopping early."""
    alive = [([START], 0.0)]
    best = None  # (normalized score, tokens, logp)
    for length in range(1, max_new_tokens + 1):
        candidates = []
        for tokens, logp in alive:
            step_logp = log_softmax(logits_fn(tokens))
            candidates += [(logp + step_logp[token], tokens, token)
                           for token in range(len(step_logp)) if token not in BANNED]
        # Sorted by log-probability; a stable sort keeps (hypothesis, token) order on ties, as top_k does.
        candidates = sorted(candidates, key=lambda candidate: -candidate[0])[: 2 * num_beams]
        for logp, tokens, token in candidates:
            if token == END and (best is None or logp / penalty(length, alpha) > best[0]):
                best = (logp / penalty(length, alpha), tokens[1:], logp)
        alive = [(tokens + [token], logp) for logp, tokens, token in candidates if token != END][:num_beams]
    if best is not None:
        return best[1], best[2]
    tokens, logp = max(alive, key=lambda hypothesis: hypothesis[1])
    return tokens[1:], logp


def brute_force_best(logits_fn, vocabulary_size, max_new_tokens, alpha):
    """The best of every finished sequence up to max_new_tokens by normalized score, and its logp."""
    allowed = [token for token in range(vocabulary_size) if token not in BANNED and token != END]
    best = [-np.inf, None, None]
    prefixes = [([START], 0.0)]  # every prefix once, depth first
    while prefixes:
        history, logp = prefixes.pop()
        step_logp = log_softmax(logits_fn(history))
        length = len(history)  # generated tokens once END is added
        score = (logp + step_logp[END]) / penalty(length, alpha)
        if score > best[0]:
            best = [score, history[1:], logp + step_logp[END]]
        if length < max_new_tokens:
            prefixes += [(history + [token], logp + step_logp[token]) for token in allowed]
    return best[1], best[2]


# === Calling decode ===


def run_decode(step, state, max_new_tokens, num_beams=1, temperature=0.0, length_penalty=0.0, seed=0,
               vocabulary_size=None):
    batch_size = len(max_new_tokens)

    def per_row(value, dtype):
        value = value if isinstance(value, (list, tuple)) else [value] * batch_size
        return tf.constant(value, dtype)

    outputs = decode(
        step, state, per_row(max_new_tokens, tf.int32), per_row(temperature, tf.float32),
        per_row(num_beams, tf.int32), per_row(length_penalty, tf.float32), per_row(seed, tf.int64),
        start_id=START, end_id=END, vocabulary_size=vocabulary_size,
    )
    return {name: value.numpy() for name, value in outputs.items()}


def row_tokens(outputs, row):
    return outputs["token_ids"][row, : outputs["lengths"][row]].tolist()


def assert_padded(outputs):
    for row, length in enumerate(outputs["lengths"]):
        assert (outputs["token_ids"][row, length:] == 0).all()


# === Tests ===


def test_greedy_equals_numpy_argmax_step_by_step():
    vocabulary_size = 9
    tables = [np.random.default_rng(seed).normal(size=(vocabulary_size, vocabulary_size)).astype(np.float32) * 3
              for seed in range(4)]
    # The banned ids get the largest logits, so a decoder that forgot the ban would pick them.
    tables[0][:, PAD] = tables[0][:, START] = 100.0
    for table in tables:
        outputs = run_decode(markov_step(table), tf.zeros([1], tf.int32), [12], vocabulary_size=vocabulary_size)
        tokens, score = reference_greedy(lambda history: table[history[-1]], 12)
        assert row_tokens(outputs, 0) == tokens
        np.testing.assert_allclose(outputs["score"][0], score, rtol=1e-5)
        assert_padded(outputs)


def beats_greedy_table():
    """Greedy takes A (0.5) and then finds only poor continuations; B (0.4) leads to a likely C."""
    A, B, C = 3, 4, 5
    return table_from_probabilities({
        START: {A: 0.5, B: 0.4, C: 0.1},
        A: {A: 0.3, B: 0.3, C: 0.3, END: 0.1},
        B: {C: 0.95, A: 0.05},
        C: {END: 0.9, A: 0.05, B: 0.05},
    }, 6), (A, B, C)


@pytest.mark.parametrize("num_beams", [2, 3])
def test_beam_search_beats_greedy_and_finds_the_best_sequence(num_beams):
    table, (A, B, C) = beats_greedy_table()
    step, logits_fn = markov_step(table), lambda history: table[history[-1]].astype(np.float64)
    state = tf.zeros([2], tf.int32)
    outputs = run_decode(step, state, [4, 4], num_beams=[1, num_beams], vocabulary_size=6)
    greedy_score, beam_score = outputs["score"]
    assert row_tokens(outputs, 0)[0] == A
    assert beam_score > greedy_score + 0.5
    best_tokens, best_logp = brute_force_best(logits_fn, 6, 4, alpha=0.0)
    assert best_tokens == [B, C]
    assert row_tokens(outputs, 1) == best_tokens
    np.testing.assert_allclose(beam_score, best_logp, rtol=1e-5)


def test_each_row_decodes_as_if_alone():
    vocabulary_size = 12
    step, reference_logits = history_step(vocabulary_size, end_bias=-0.5)
    # (source hash, num_beams, max_new_tokens, length_penalty): a mix of beams, lengths and
    # penalties, negative ones included, since the early stop's bound depends on the sign.
    beam_choices = [1, 2, 4, 3, 2, 4, 1, 3]
    length_choices = [7, 5, 9, 3, 10, 8, 2, 10]
    alpha_choices = [0.0, 0.6, 1.0, -0.5, 2.0, -1.0, 0.0, 1.5]
    rows = [(1000 + 17 * row, beam_choices[row % 8], length_choices[(row * 3) % 8], alpha_choices[(row * 5) % 8])
            for row in range(16)]
    hashes, beams, lengths, alphas = map(list, zip(*rows))
    together = run_decode(step, history_state(hashes), lengths, num_beams=beams, length_penalty=alphas,
                          vocabulary_size=vocabulary_size)
    assert together["token_ids"].shape == (len(rows), max(lengths))
    assert_padded(together)
    for row, (row_hash, num_beams, max_new_tokens, alpha) in enumerate(rows):
        alone = run_decode(step, history_state([row_hash]), [max_new_tokens], num_beams=num_beams,
                           length_penalty=alpha, vocabulary_size=vocabulary_size)
        assert row_tokens(together, row) == row_tokens(alone, 0)
        np.testing.assert_allclose(together["score"][row], alone["score"][0], rtol=1e-5)
        # Both are the documented algorithm, which (with its exact early stop) matches a
        # reference that never stops early.
        logits_fn = lambda history: reference_logits(row_hash, history)  # noqa: E731
        if num_beams == 1:
            tokens, score = reference_greedy(logits_fn, max_new_tokens)
        else:
            tokens, score = reference_beam(logits_fn, num_beams, max_new_tokens, alpha)
        assert row_tokens(together, row) == tokens
        np.testing.assert_allclose(together["score"][row], score, rtol=1e-4)


def test_sampling_is_seeded_per_row_and_follows_the_softmax():
    vocabulary_size = 7
    table = np.random.default_rng(3).normal(size=(vocabulary_size, vocabulary_size)).astype(np.float32)
    table[:, END] = -3.0  # long enough sequences to tell seeds apart
    step = markov_step(table)
    seeds = [5, 5, 6, 7, 5]
    temperatures = [1.0, 1.0, 1.0, 1.0, 0.0]
    first = run_decode(step, tf.zeros([5], tf.int32), [20] * 5, temperature=temperatures, seed=seeds,
                       vocabulary_size=vocabulary_size)
    assert row_tokens(first, 0) == row_tokens(first, 1)  # same seed, same tokens
    assert row_tokens(first, 0) != row_tokens(first, 2) or row_tokens(first, 0) != row_tokens(first, 3)
    # A row's tokens don't depend on the rest of the batch.
    alone = run_decode(step, tf.zeros([1], tf.int32), [20], temperature=1.0, seed=6, vocabulary_size=vocabulary_size)
    assert row_tokens(alone, 0) == row_tokens(first, 2)
    # Greedy rows ignore their seeds.
    greedy = run_decode(step, tf.zeros([2], tf.int32), [20, 20], temperature=0.0, seed=[1, 999],
                        vocabulary_size=vocabulary_size)
    expected, _ = reference_greedy(lambda history: table[history[-1]], 20)
    assert row_tokens(greedy, 0) == row_tokens(greedy, 1) == row_tokens(first, 4) == expected

    # The first token over many seeds follows softmax(logits / temperature) over the allowed ids.
    num_seeds = 3000
    for temperature in (1.0, 2.0):
        outputs = run_decode(step, tf.zeros([num_seeds], tf.int32), [1] * num_seeds, temperature=temperature,
                             seed=list(range(num_seeds)), vocabulary_size=vocabulary_size)
        first_tokens = np.where(outputs["lengths"] > 0, outputs["token_ids"][:, 0], END)
        frequencies = np.bincount(first_tokens, minlength=vocabulary_size) / num_seeds
        logits = table[START].astype(np.float64) / temperature
        logits[list(BANNED)] = -np.inf
        expected = np.exp(log_softmax(logits))
        assert np.abs(frequencies - expected).max() < 0.04, (frequencies, expected)


def length_penalty_table():
    """A (then END) is the likeliest sequence; B C C ... END is longer and less likely."""
    A, B, C = 3, 4, 5
    return table_from_probabilities({
        START: {A: 0.55, B: 0.45},
        A: {END: 0.5, C: 0.5},
        B: {C: 0.99, END: 0.01},
        C: {C: 0.8, END: 0.2},
    }, 6), (A, B, C)


def test_a_larger_length_penalty_prefers_the_longer_hypothesis():
    table, (A, B, C) = length_penalty_table()
    logits_fn = lambda history: table[history[-1]].astype(np.float64)  # noqa: E731
    alphas = [0.0, 1.0, 3.0]
    outputs = run_decode(markov_step(table), tf.zeros([3], tf.int32), [6] * 3, num_beams=2, length_penalty=alphas,
                         vocabulary_size=6)
    for row, alpha in enumerate(alphas):
        tokens, logp = brute_force_best(logits_fn, 6, 6, alpha)
        assert row_tokens(outputs, row) == tokens, alpha
        # The score is the raw log-probability, end_id included, without the penalty.
        np.testing.assert_allclose(outputs["score"][row], logp, rtol=1e-5)
    assert row_tokens(outputs, 0) == row_tokens(outputs, 1) == [A]
    assert row_tokens(outputs, 2) == [B, C, C, C, C]
    assert outputs["score"][2] < outputs["score"][0]  # chosen for its length, not its probability


def test_a_negative_length_penalty_does_not_stop_the_search_too_early():
    # With a negative penalty, shorter is better, so tensor2tensor's bound (alive logp over the
    # penalty at max_new_tokens) would stop after A END and miss A C END, which scores higher.
    A, B, C = 3, 4, 5
    table = table_from_probabilities({
        START: {A: 0.6, B: 0.4},
        A: {END: 0.3, C: 0.7},
        B: {C: 0.99, END: 0.005, A: 0.005},
        C: {END: 0.99, C: 0.01},
    }, 6)
    logits_fn = lambda history: table[history[-1]].astype(np.float64)  # noqa: E731
    outputs = run_decode(markov_step(table), tf.zeros([1], tf.int32), [10], num_beams=2, length_penalty=-1.0,
                         vocabulary_size=6)
    tokens, logp = brute_force_best(logits_fn, 6, 10, alpha=-1.0)
    assert tokens == [A, C]
    assert row_tokens(outputs, 0) == tokens
    np.testing.assert_allclose(outputs["score"][0], logp, rtol=1e-5)


def test_generation_stops_at_the_end_token_and_the_loop_ends_early():
    A, B, C = 3, 4, 5
    table = table_from_probabilities({
        START: {A: 0.7, B: 0.3},
        A: {B: 0.8, END: 0.2},
        B: {END: 0.99, C: 0.01},
        C: {END: 0.99, C: 0.01},
    }, 6)
    markov = markov_step(table)

    def step(state, token_ids, index):
        # Every row ends within 3 tokens, so the loop must not run to max_new_tokens.
        check = tf.debugging.assert_less(index, 3, message="the loop ran past the point where every row had ended")
        with tf.control_dependencies([check]):
            return markov(state, token_ids, index)

    outputs = run_decode(step, tf.zeros([3], tf.int32), [50, 50, 2], num_beams=[1, 3, 1], length_penalty=0.0,
                         vocabulary_size=6)
    assert outputs["token_ids"].shape == (3, 50)
    assert row_tokens(outputs, 0) == [A, B] and outputs["lengths"][0] == 2
    np.testing.assert_allclose(outputs["score"][0], np.log(0.7 * 0.8 * 0.99), rtol=1e-5)
    assert row_tokens(outputs, 1) == [A, B] and outputs["lengths"][1] == 2  # 0.554 beats B END (0.297)
    # Cut at max_new_tokens before its end: the unfinished tokens and their log-probability.
    assert row_tokens(outputs, 2) == [A, B] and outputs["lengths"][2] == 2
    np.testing.assert_allclose(outputs["score"][2], np.log(0.7 * 0.8), rtol=1e-5)
    assert_padded(outputs)
    assert END not in outputs["token_ids"]


def test_beam_search_returns_the_best_alive_hypothesis_when_none_finished():
    # END is never likely enough to be among the 2k best extensions, so nothing finishes.
    A, B, C = 3, 4, 5
    table = table_from_probabilities({
        START: {A: 0.5, B: 0.4, C: 0.04, 6: 0.03, 7: 0.03},
        A: {A: 0.3, B: 0.3, C: 0.3, 6: 0.1},
        B: {C: 0.95, 6: 0.02, 7: 0.02, 8: 0.01},
        C: {A: 0.5, B: 0.5},
    }, 10)
    outputs = run_decode(markov_step(table), tf.zeros([1], tf.int32), [2], num_beams=2, vocabulary_size=10)
    assert row_tokens(outputs, 0) == [B, C] and outputs["lengths"][0] == 2
    np.testing.assert_allclose(outputs["score"][0], np.log(0.4 * 0.95), rtol=1e-5)


def test_in_tf_function_with_unknown_batch_size_and_reordered_state():
    vocabulary_size = 8
    step, reference_logits = history_step(vocabulary_size, end_bias=0.5, seed=1)
    vector = lambda dtype: tf.TensorSpec([None], dtype)  # noqa: E731

    @tf.function(input_signature=[vector(tf.int64), vector(tf.int32), vector(tf.float32), vector(tf.int32),
                                  vector(tf.float32), vector(tf.int64)])
    def translate(source_hash, max_new_tokens, temperature, num_beams, length_penalty, seed):
        return decode(step, history_state_from(source_hash), max_new_tokens, temperature, num_beams, length_penalty,
                      seed, start_id=START, end_id=END, vocabulary_size=vocabulary_size)

    def history_state_from(source_hash):
        return {"hash": source_hash, "steps": tf.zeros_like(source_hash, tf.int32)}

    rows = [(101, 3, 8, 0.0), (202, 4, 8, 1.0), (303, 1, 8, 0.0), (404, 2, 5, 0.3)]
    for batch in (rows, rows[1:2]):  # one trace, two batch sizes
        hashes, beams, lengths, alphas = map(list, zip(*batch))
        outputs = translate(tf.constant(hashes, tf.int64), tf.constant(lengths), tf.zeros([len(batch)]),
                            tf.constant(beams), tf.constant(alphas), tf.zeros([len(batch)], tf.int64))
        outputs = {name: value.numpy() for name, value in outputs.items()}
        for row, (row_hash, num_beams, max_new_tokens, alpha) in enumerate(batch):
            logits_fn = lambda history: reference_logits(row_hash, history)  # noqa: E731
            if num_beams == 1:
                tokens, score = reference_greedy(logits_fn, max_new_tokens)
            else:
                tokens, score = reference_beam(logits_fn, num_beams, max_new_tokens, alpha)
            assert row_tokens(outputs, row) == tokens
            np.testing.assert_allclose(outputs["score"][row], score, rtol=1e-4)
    assert len(translate.get_concrete_function().graph.get_operations()) > 0
    assert translate.experimental_get_tracing_count() == 1


def test_in_a_compat_v1_graph_session():
    table, (A, B, C) = beats_greedy_table()
    graph = tf.Graph()
    with graph.as_default():
        placeholder = lambda dtype: tf.compat.v1.placeholder(dtype, [None])  # noqa: E731
        inputs = [placeholder(tf.int32), placeholder(tf.float32), placeholder(tf.int32), placeholder(tf.float32),
                  placeholder(tf.int64)]
        source = tf.compat.v1.placeholder(tf.int32, [None])
        outputs = decode(markov_step(table), source, *inputs, start_id=START, end_id=END, vocabulary_size=6)
        with tf.compat.v1.Session(graph=graph) as session:
            values = session.run(outputs, feed_dict={
                source: [0, 0, 0], inputs[0]: [4, 4, 6], inputs[1]: [0.0, 0.0, 1.0], inputs[2]: [1, 2, 1],
                inputs[3]: [0.0, 0.0, 0.0], inputs[4]: [0, 0, 9],
            })
            assert row_tokens(values, 0)[0] == A
            assert row_tokens(values, 1) == [B, C]
            assert values["score"][1] > values["score"][0]
            with pytest.raises(tf.errors.InvalidArgumentError, match="num_beams"):
                session.run(outputs, feed_dict={
                    source: [0], inputs[0]: [4], inputs[1]: [0.0], inputs[2]: [0], inputs[3]: [0.0], inputs[4]: [0],
                })
