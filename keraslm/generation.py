"""The decoding loop: prompts -> sampled continuations, as TensorFlow ops that live in a SavedModel.

The loop is a tf.while_loop over positions. A model-specific stepper (keraslm.models) turns the
token buffer and its own state into next-token logits; this module samples from them, one random
stream per row, so a row's text depends only on its own prompt, settings and seed.
"""

import tensorflow as tf

from keraslm.tokenizers import NUM_SPECIAL_TOKENS, PAD_ID

# splitmix64 constants (Steele, Lea & Flood 2014): a cheap, well-mixed counter-based hash.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB


def _splitmix64(x):
    x = x + tf.constant(_GOLDEN, tf.uint64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(30, tf.uint64))) * tf.constant(_MIX_1, tf.uint64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(27, tf.uint64))) * tf.constant(_MIX_2, tf.uint64)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(31, tf.uint64)))


def uniform_noise(seeds, position, vocabulary_size):
    """Uniform (0, 1) noise (B, V) that depends only on (seed of the row, position, token id).

    TF's stateless random ops take one seed for a whole tensor; per-row seeds need a hash.
    """
    row_key = _splitmix64(tf.cast(seeds, tf.uint64))  # (B,)
    step_key = _splitmix64(tf.bitwise.bitwise_xor(row_key, tf.cast(position, tf.uint64)))  # (B,)
    token_index = tf.range(vocabulary_size, dtype=tf.int64)
    bits = _splitmix64(step_key[:, None] + tf.cast(token_index, tf.uint64)[None, :] * tf.constant(_GOLDEN, tf.uint64))
    # The top 53 bits as a double in [0, 1), shifted by half a unit to exclude 0.
    mantissa = tf.cast(tf.bitwise.right_shift(bits, tf.constant(11, tf.uint64)), tf.float64)
    return (mantissa + 0.5) * (2.0**-53)


def sample_next_token(logits, temperature, seeds, position):
    """Token ids (B,): argmax where temperature is 0, else a sample from softmax(logits / T).

    Sampling uses the Gumbel-max trick with per-row noise; [PAD] and [UNK] are never produced.
    """
    logits = tf.cast(logits, tf.float32)  # (B, V)
    vocabulary_size = tf.shape(logits)[-1]
    is_special = tf.range(vocabulary_size) < NUM_SPECIAL_TOKENS
    logits = tf.where(is_special[None, :], tf.float32.min, logits)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    gumbel = tf.cast(-tf.math.log(-tf.math.log(uniform_noise(seeds, position, vocabulary_size))), tf.float32)
    scaled = logits / tf.maximum(temperature, 1e-6)[:, None] + gumbel
    sampled = tf.argmax(scaled, axis=-1, output_type=tf.int32)
    return tf.where(temperature > 0, sampled, greedy)


def generate_tokens(stepper, prompt_ids, max_new_tokens, temperature, seeds):
    """Continues each prompt by max_new_tokens[b] tokens.

    Args:
        stepper: a keraslm.models stepper (initial_state / step).
        prompt_ids: ragged int32 (B, (n_b)), every n_b >= 1.
        max_new_tokens: int32 (B,). temperature: float32 (B,). seeds: int64 (B,).
    Returns:
        Ragged int32 (B, (max_new_tokens[b])) of new token ids.
    """
    lengths = tf.cast(prompt_ids.row_lengths(), tf.int32)  # (B,)
    ends = lengths + max_new_tokens  # (B,) one past each row's last position
    total = tf.reduce_max(ends)
    batch_size = tf.shape(lengths)[0]
    tokens = prompt_ids.to_tensor(default_value=PAD_ID, shape=tf.stack([batch_size, total]))  # (B, total)
    start = tf.reduce_min(lengths)
    rows = tf.range(batch_size)

    def body(position, tokens, state):
        # Every row advances together; a row still inside its prompt keeps its own token.
        logits, state = stepper.step(state, tokens, position)
        new_token = sample_next_token(logits, temperature, seeds, position)
        is_new = (position >= lengths) & (position < ends)
        column = tf.where(is_new, new_token, tokens[:, position])
        indices = tf.stack([rows, tf.fill([batch_size], position)], axis=1)
        return position + 1, tf.tensor_scatter_nd_update(tokens, indices, column), state

    state = stepper.initial_state(tokens, start)
    _, tokens, _ = tf.while_loop(
        lambda position, tokens, state: position < total,
        body,
        [start, tokens, state],
        parallel_iterations=1,
    )
    offsets = tf.range(tf.reduce_max(max_new_tokens))[None, :]  # (1, N)
    new_tokens = tf.gather(tokens, tf.minimum(lengths[:, None] + offsets, total - 1), batch_dims=1)  # (B, N)
    return tf.RaggedTensor.from_tensor(new_tokens, lengths=max_new_tokens)
