"""The decoding loop: prompts -> sampled continuations, as TensorFlow ops that live in a SavedModel.

The loop is a tf.while_loop over positions that stops as soon as every row is done. A
model-specific stepper (keraslm.steppers) turns the token buffer and its own state into next-token
logits; this module shapes them with each row's controls (repetition penalty, temperature, top-k,
top-p) and samples with one random stream per row, so a row's text depends only on its own
prompt, controls and seed, never on the rest of the batch.
"""

import typing

import tensorflow as tf
import tensorflow_text as tf_text

from keraslm.tokenizers import NUM_SPECIAL_TOKENS, PAD_ID

# Stop strings are matched against the newest tokens every step at a cost that grows with
# their length; this bounds it.
MAX_STOP_BYTES = 128

# Up to this many rows, steppers use their small-batch arithmetic (measured crossover: 8 to 16).
SMALL_BATCH = 8

# splitmix64 constants (Steele, Lea & Flood 2014): a cheap, well-mixed counter-based hash.
_GOLDEN = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB


class Controls(typing.NamedTuple):
    """Per-row decoding controls, each a tensor of shape (B,)."""

    max_new_tokens: tf.Tensor  # int32, >= 1
    temperature: tf.Tensor  # float32, 0 = greedy
    top_k: tf.Tensor  # int32, 0 = off
    top_p: tf.Tensor  # float32 in (0, 1], 1 = off
    repetition_penalty: tf.Tensor  # float32 > 0, 1 = off
    seed: tf.Tensor  # int64
    stop: tf.Tensor  # string, "" = none


def validate_controls(controls, batch_size, max_new_tokens_limit):
    """Assertions that fail with an InvalidArgumentError naming the bad input."""
    checks = [
        tf.debugging.assert_equal(tf.size(value), batch_size, message=f"{name} must have one value per prompt")
        for name, value in controls._asdict().items()
    ]
    checks += [
        tf.debugging.assert_greater_equal(controls.max_new_tokens, 1, message="max_new_tokens must be at least 1"),
        tf.debugging.assert_less_equal(
            controls.max_new_tokens, max_new_tokens_limit, message=f"max_new_tokens must be at most {max_new_tokens_limit}"
        ),
        tf.debugging.assert_greater_equal(controls.temperature, 0.0, message="temperature must be >= 0 (0 = greedy)"),
        tf.debugging.assert_less(controls.temperature, float("inf"), message="temperature must be finite"),
        tf.debugging.assert_less(controls.repetition_penalty, float("inf"), message="repetition_penalty must be finite"),
        tf.debugging.assert_less_equal(
            tf.strings.length(controls.stop), MAX_STOP_BYTES, message=f"stop must be at most {MAX_STOP_BYTES} bytes"
        ),
        tf.debugging.assert_greater_equal(controls.top_k, 0, message="top_k must be >= 0 (0 = off)"),
        tf.debugging.assert_greater(controls.top_p, 0.0, message="top_p must be in (0, 1] (1 = off)"),
        tf.debugging.assert_less_equal(controls.top_p, 1.0, message="top_p must be in (0, 1] (1 = off)"),
        tf.debugging.assert_greater(controls.repetition_penalty, 0.0, message="repetition_penalty must be > 0 (1 = off)"),
    ]
    return checks


# === Sampling ===


def _splitmix64(x):
    x = x + tf.constant(_GOLDEN, tf.uint64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(30, tf.uint64))) * tf.constant(_MIX_1, tf.uint64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(27, tf.uint64))) * tf.constant(_MIX_2, tf.uint64)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(31, tf.uint64)))


def uniform_noise(seeds, positions, vocabulary_size):
    """Uniform (0, 1) noise (P, B, V) that depends only on (seed of the row, position, token id).

    TF's stateless random ops take one seed for a whole tensor; per-row seeds need a hash.
    """
    row_key = _splitmix64(tf.cast(seeds, tf.uint64))  # (B,)
    positions = tf.cast(tf.reshape(positions, [-1, 1]), tf.uint64)  # (P, 1)
    step_key = _splitmix64(tf.bitwise.bitwise_xor(row_key[None, :], positions))  # (P, B)
    token_index = tf.cast(tf.range(vocabulary_size, dtype=tf.int64), tf.uint64) * tf.constant(_GOLDEN, tf.uint64)
    bits = _splitmix64(step_key[:, :, None] + token_index[None, None, :])  # (P, B, V)
    # The top 53 bits as a double in [0, 1), shifted by half a unit to exclude 0.
    mantissa = tf.cast(tf.bitwise.right_shift(bits, tf.constant(11, tf.uint64)), tf.float64)
    return (mantissa + 0.5) * (2.0**-53)


def gumbel_noise(controls, positions, vocabulary_size):
    """Gumbel noise (P, B, V) for the given positions, zero on greedy rows (temperature 0)."""
    gumbel = tf.cast(-tf.math.log(-tf.math.log(uniform_noise(controls.seed, positions, vocabulary_size))), tf.float32)
    return gumbel * tf.cast(controls.temperature > 0, tf.float32)[None, :, None]


def inverse_temperature(controls):
    """1 / temperature, and 1 on greedy rows, whose noise is zero: argmax of the logits."""
    return tf.where(controls.temperature > 0, 1.0 / tf.maximum(controls.temperature, 1e-6), 1.0)


def mask_special_tokens(logits):
    """[PAD] and [UNK] (ids 0 and 1) are never generated."""
    is_special = tf.range(tf.shape(logits)[-1]) < NUM_SPECIAL_TOKENS
    return tf.where(is_special, tf.float32.min, logits)


def apply_repetition_penalty(logits, seen, penalty):
    """CTRL's penalty (Keskar et al. 2019): seen tokens' logits divided (if > 0) or multiplied by it."""
    penalty = penalty[:, None]
    penalized = tf.where(logits > 0, logits / penalty, logits * penalty)
    return tf.where(seen, penalized, logits)


def filter_top_k_top_p(logits, top_k, top_p):
    """Logits (B, V) with everything outside each row's top-k and top-p set to -inf-like.

    top_k 0 and top_p 1 leave a row untouched.
    """
    vocabulary_size = tf.shape(logits)[-1]
    sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")  # (B, V)
    # Top-k: the k-th largest logit is the row's threshold.
    k = tf.where(top_k > 0, tf.minimum(top_k, vocabulary_size), vocabulary_size)
    kth = tf.gather(sorted_logits, k - 1, batch_dims=1)  # (B,)
    # Top-p (nucleus, Holtzman et al. 2020): keep the smallest prefix of the sorted
    # distribution whose probability reaches p; the first token is always kept.
    probabilities = tf.nn.softmax(sorted_logits)
    before = tf.cumsum(probabilities, axis=-1, exclusive=True)
    in_nucleus = before < top_p[:, None]
    nucleus_size = tf.reduce_sum(tf.cast(in_nucleus, tf.int32), axis=-1)
    pth = tf.gather(sorted_logits, tf.maximum(nucleus_size, 1) - 1, batch_dims=1)
    threshold = tf.maximum(kth, pth)[:, None]
    return tf.where(logits < threshold, tf.float32.min, logits)


def sample_with_noise(logits, controls, inverse_temperature, noise, seen=None, filtered=True):
    """Token ids (B,) = argmax(shaped logits / temperature + Gumbel noise), the Gumbel-max trick.

    With zero noise on greedy rows this is their argmax, so top_k=1 and temperature 0 agree.
    """
    logits = tf.cast(logits, tf.float32)  # (B, V)
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, controls.repetition_penalty)
    # Special tokens are masked after scaling, which could otherwise undo the mask.
    scaled = mask_special_tokens(logits * inverse_temperature[:, None])
    if filtered:
        scaled = filter_top_k_top_p(scaled, controls.top_k, controls.top_p)
    return tf.argmax(scaled + noise, axis=-1, output_type=tf.int32)


def sample_next_token(logits, controls, position, seen=None, filtered=True):
    """One step of sampling at `position`, noise included."""
    noise = gumbel_noise(controls, [position], tf.shape(logits)[-1])[0]
    return sample_with_noise(logits, controls, inverse_temperature(controls), noise, seen, filtered)


# === Stop strings ===


def find_first(texts, patterns):
    """Byte offset of the first occurrence of patterns[b] in texts[b], or -1 (also for "")."""
    text_bytes = tf_text.ByteSplitter().split(texts)  # (B, (n)) uint8
    pattern_bytes = tf_text.ByteSplitter().split(patterns)
    text_length = tf.cast(text_bytes.row_lengths(), tf.int32)
    pattern_length = tf.cast(pattern_bytes.row_lengths(), tf.int32)
    text_dense = tf.cast(text_bytes.to_tensor(), tf.int32)  # (B, T)
    pattern_dense = tf.cast(pattern_bytes.to_tensor(), tf.int32)  # (B, P)
    offsets = tf.range(tf.shape(text_dense)[1])  # (T,)
    inside = tf.range(tf.shape(pattern_dense)[1])  # (P,)
    index = tf.minimum(offsets[:, None] + inside[None, :], tf.maximum(tf.shape(text_dense)[1] - 1, 0))  # (T, P)
    windows = tf.gather(text_dense, index, axis=1)  # (B, T, P)
    equal = tf.equal(windows, pattern_dense[:, None, :]) | (inside[None, None, :] >= pattern_length[:, None, None])
    found = tf.reduce_all(equal, axis=-1) & (offsets[None, :] + pattern_length[:, None] <= text_length[:, None])
    found &= (pattern_length > 0)[:, None]
    first = tf.argmax(tf.cast(found, tf.int32), axis=-1, output_type=tf.int32)
    return tf.where(tf.reduce_any(found, axis=-1), first, -1)


def cut_at_stop(texts, stops):
    """Each text cut before the first occurrence of its stop string ("" cuts nothing).

    Row by row with the string-split op: linear in the text, where find_first's byte windows
    grow with text length times stop length.
    """

    def cut(row):
        text, stop = row
        return tf.cond(
            tf.strings.length(stop) > 0, lambda: tf.strings.split(text, sep=stop, maxsplit=1)[0], lambda: text
        )

    return tf.map_fn(cut, (texts, stops), fn_output_signature=tf.string)


# === The loop ===


def is_plain(controls):
    """True (a scalar) when no row uses top-k, top-p, a repetition penalty or a stop string.

    Such requests run the loop without those ops (the "plain" variants).
    """
    return (
        tf.reduce_all(controls.top_k == 0)
        & tf.reduce_all(controls.top_p >= 1.0)
        & tf.reduce_all(tf.equal(controls.repetition_penalty, 1.0))
        & tf.equal(tf.reduce_max(tf.strings.length(controls.stop)), 0)
    )


# The loop's traced variants: (full controls, small-batch arithmetic) of each.
VARIANTS = {"plain_small": (False, True), "plain": (False, False), "full": (True, False)}


def choose_variant(plain, batch_size):
    """The variant generate_tokens(variant=None) runs, from is_plain's value and the batch size."""
    if not plain:
        return "full"
    return "plain_small" if batch_size <= SMALL_BATCH else "plain"


def generate_tokens(stepper, prompt_ids, controls, detokenize, variant=None):
    """Continues each prompt; returns (new token ids, ragged (B, (num_tokens[b])), num_tokens).

    Args:
        stepper: a keraslm.steppers stepper (initial_state / step).
        prompt_ids: ragged int32 (B, (n_b)), every n_b >= 1.
        controls: a Controls of (B,) tensors.
        detokenize: ids (B, T) -> strings (B,); used to watch for stop strings.
        variant: None traces every variant of the loop and picks one per call (choose_variant);
            a key of VARIANTS traces only that one. A plain variant ignores top-k, top-p, the
            repetition penalty and stop strings, so callers pick one only when is_plain holds.
    """
    lengths = tf.cast(prompt_ids.row_lengths(), tf.int32)  # (B,)
    ends = lengths + controls.max_new_tokens  # (B,) one past each row's last position
    total = tf.reduce_max(ends)
    batch_size = tf.shape(lengths)[0]
    tokens = prompt_ids.to_tensor(default_value=PAD_ID, shape=tf.stack([batch_size, total]))  # (B, total)
    start = tf.reduce_min(lengths)
    rows = tf.range(batch_size)
    max_stop_bytes = tf.reduce_max(tf.strings.length(controls.stop))  # 0: no stop strings

    def stopped_now(tokens, position):
        """Rows whose text generated so far ends with (contains, in its last tokens) the stop."""
        # Every generated token decodes to at least one byte, so the last max_stop_bytes
        # tokens hold any occurrence that the newest token completed.
        first = tf.maximum(position + 1 - max_stop_bytes, 0)
        tail = tokens[:, first : position + 1]  # (B, <= M)
        is_generated = tf.range(first, position + 1)[None, :] >= lengths[:, None]
        tail = tf.where(is_generated, tail, PAD_ID)
        return find_first(detokenize(tail), controls.stop) >= 0

    def run(full_controls, small_batch=False):
        """The loop; `full_controls` adds repetition penalty, top-k/top-p and stop strings.

        Traced variants, chosen once per request, keep those ops out of plain requests and let
        the stepper use its small-batch arithmetic.
        """

        def body(position, tokens, state, generated, done, seen):
            # Every row advances together; a row still inside its prompt keeps its own token.
            logits, state = stepper.step(state, tokens, position, small_batch=small_batch)
            new_token = sample_with_noise(
                logits,
                controls,
                inverse_temperature_per_row,
                gumbel_noise(controls, [position], vocabulary_size)[0],
                seen=seen if full_controls else None,
                filtered=full_controls,
            )
            is_new = (position >= lengths) & ~done
            column = tf.where(is_new, new_token, tokens[:, position])
            indices = tf.stack([rows, tf.fill([batch_size], position)], axis=1)
            tokens = tf.tensor_scatter_nd_update(tokens, indices, column)
            generated += tf.cast(is_new, tf.int32)
            done |= generated >= controls.max_new_tokens
            if full_controls:
                seen |= tf.one_hot(column, vocabulary_size, on_value=True, off_value=False) & is_new[:, None]
                done |= tf.cond(
                    max_stop_bytes > 0, lambda: stopped_now(tokens, position) & is_new, lambda: tf.zeros_like(done)
                )
            return position + 1, tokens, state, generated, done, seen

        state = stepper.initial_state(tokens, start)
        if full_controls:
            # The prompt counts as seen text, as in CTRL.
            where = tf.stack([tf.cast(prompt_ids.value_rowids(), tf.int32), prompt_ids.flat_values], axis=1)
            seen = tf.tensor_scatter_nd_update(
                tf.zeros([batch_size, vocabulary_size], tf.bool), where, tf.ones_like(prompt_ids.flat_values, tf.bool)
            )
        else:
            seen = tf.zeros([batch_size, vocabulary_size], tf.bool)
        generated = tf.zeros([batch_size], tf.int32)
        done = tf.zeros([batch_size], tf.bool)
        _, tokens_out, _, generated, _, _ = tf.while_loop(
            lambda position, tokens, state, generated, done, seen: (position < total) & ~tf.reduce_all(done),
            body,
            [start, tokens, state, generated, done, seen],
            parallel_iterations=1,
        )
        return tokens_out, generated

    vocabulary_size = stepper.vocabulary_size
    inverse_temperature_per_row = inverse_temperature(controls)
    if variant is None:
        tokens, num_tokens = tf.cond(
            is_plain(controls),
            lambda: tf.cond(batch_size <= SMALL_BATCH, lambda: run(False, small_batch=True), lambda: run(False)),
            lambda: run(True),
        )
    else:
        full_controls, small_batch = VARIANTS[variant]
        tokens, num_tokens = run(full_controls, small_batch=small_batch)
    offsets = tf.range(tf.reduce_max(num_tokens))[None, :]  # (1, N)
    new_tokens = tf.gather(tokens, tf.minimum(lengths[:, None] + offsets, total - 1), batch_dims=1)  # (B, N)
    return tf.RaggedTensor.from_tensor(new_tokens, lengths=num_tokens), num_tokens
