"""Log-likelihood of text under a language model, windowed exactly as training validates.

A token sequence is cut into windows of sequence_length + 1 tokens with stride sequence_length;
each window predicts its last sequence_length tokens from the ones before them. Every token but
the first is predicted once, with the same context the validation loss gives it, so
exp(-log_likelihood / num_tokens) here and exp(val_loss) in training agree on the same text.
"""

import tensorflow as tf

from keraslm.tokenizers import PAD_ID

# Windows per forward pass when scoring many at once.
WINDOWS_PER_BATCH = 64


def score_windows(model, windows, lengths):
    """Summed log-probabilities of each window's predicted tokens.

    Args:
        model: token ids (W, S) -> logits (W, S, V).
        windows: int32 (W, S + 1), padded after each window's `lengths` valid tokens.
        lengths: int32 (W,), valid tokens per window.
    Returns:
        (log_likelihood float32 (W,), num_tokens int32 (W,)).
    """
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = tf.cast(model(inputs, training=False), tf.float32)  # (W, S, V)
    log_probabilities = tf.gather(tf.nn.log_softmax(logits), targets, batch_dims=2)  # (W, S)
    # Target j (window position j + 1) exists if j + 1 < length.
    valid = tf.range(1, tf.shape(windows)[1])[None, :] < lengths[:, None]
    log_likelihood = tf.reduce_sum(tf.where(valid, log_probabilities, 0.0), axis=1)
    return log_likelihood, tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)


def text_windows(token_ids, sequence_length):
    """Ragged ids (B, (n)) -> windows (W, S + 1), their lengths (W,) and owning rows (W,).

    Windows are gathered from the ragged values directly: memory grows with the windows, not
    with rows x the longest row (a padded (W, n) gather needed 28 GB for one 7 MB text).
    """
    lengths = tf.cast(token_ids.row_lengths(), tf.int32)  # (B,)
    starts = tf.ragged.range(tf.zeros_like(lengths), tf.maximum(lengths - 1, 0), sequence_length)  # (B, (w))
    rows = tf.cast(starts.value_rowids(), tf.int32)  # (W,)
    starts = starts.flat_values  # (W,)
    # Room for the last window's full length past the last row.
    flat = tf.concat([token_ids.flat_values, tf.fill([sequence_length + 1], tf.cast(PAD_ID, token_ids.dtype))], axis=0)
    row_starts = tf.cast(token_ids.row_starts(), tf.int32)  # (B,)
    offsets = tf.range(sequence_length + 1)[None, :]  # (1, S + 1)
    window_lengths = tf.minimum(tf.gather(lengths, rows) - starts, sequence_length + 1)  # (W,)
    index = (tf.gather(row_starts, rows) + starts)[:, None] + offsets  # (W, S + 1)
    # Positions past a row's end would read the next row: [PAD] instead.
    windows = tf.where(offsets < window_lengths[:, None], tf.gather(flat, index), tf.cast(PAD_ID, token_ids.dtype))
    return windows, window_lengths, rows


def score_token_ids(model, token_ids, sequence_length):
    """(log_likelihood (B,), num_tokens (B,)) of ragged ids (B, (n)), in bounded batches."""
    windows, lengths, rows = text_windows(token_ids, sequence_length)
    num_windows = tf.shape(windows)[0]
    batch_size = token_ids.nrows(out_type=tf.int32)

    def body(first, log_likelihood, counts):
        last = tf.minimum(first + WINDOWS_PER_BATCH, num_windows)
        window_ll, window_counts = score_windows(model, windows[first:last], lengths[first:last])
        segment = rows[first:last]
        log_likelihood += tf.math.unsorted_segment_sum(window_ll, segment, batch_size)
        counts += tf.math.unsorted_segment_sum(window_counts, segment, batch_size)
        return last, log_likelihood, counts

    _, log_likelihood, counts = tf.while_loop(
        lambda first, *_: first < num_windows,
        body,
        [tf.constant(0), tf.zeros([batch_size], tf.float32), tf.zeros([batch_size], tf.int32)],
    )
    return log_likelihood, counts
