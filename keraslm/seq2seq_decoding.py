"""Decoding for sequence-to-sequence models: greedy, seeded sampling and beam search, per row.

Everything is TensorFlow ops in one tf.while_loop, so a translation model's SavedModel export can
trace it into a tf.function and TF Serving runs it without keraslm. Each request row brings its
own controls; a row's output depends only on its own source, controls and seed, never on which
other rows share the batch.
"""

import tensorflow as tf

from keraslm.generation import uniform_noise

# GNMT's length penalty (Wu et al. 2016, eq. 14): ((5 + length) / 6) ** alpha.
_LENGTH_PENALTY_BASE = 5.0


def length_penalty_divisor(length, alpha):
    """((5 + length) / 6) ** alpha, the divisor of a hypothesis's log-probability; 1 when alpha is 0."""
    return tf.pow((_LENGTH_PENALTY_BASE + tf.cast(length, tf.float32)) / (_LENGTH_PENALTY_BASE + 1.0), alpha)


def _validated(max_new_tokens, temperature, num_beams, length_penalty, seed):
    """The controls, cast and checked: InvalidArgumentErrors name the bad one.

    The checks are control dependencies of the returned tensors, so they also run in a
    tf.compat.v1 Session, where nothing adds them automatically.
    """
    max_new_tokens = tf.cast(max_new_tokens, tf.int32)
    temperature = tf.cast(temperature, tf.float32)
    num_beams = tf.cast(num_beams, tf.int32)
    length_penalty = tf.cast(length_penalty, tf.float32)
    seed = tf.cast(seed, tf.int64)
    batch_size = tf.size(max_new_tokens)
    checks = [
        tf.debugging.assert_equal(tf.size(value), batch_size, message=f"{name} must have one value per row")
        for name, value in [("temperature", temperature), ("num_beams", num_beams),
                            ("length_penalty", length_penalty), ("seed", seed)]
    ]
    checks += [
        tf.debugging.assert_greater_equal(max_new_tokens, 1, message="max_new_tokens must be at least 1"),
        tf.debugging.assert_greater_equal(temperature, 0.0, message="temperature must be >= 0 (0 = greedy)"),
        tf.debugging.assert_less(temperature, float("inf"), message="temperature must be finite"),
        tf.debugging.assert_greater_equal(num_beams, 1, message="num_beams must be at least 1"),
        tf.debugging.assert_less(tf.abs(length_penalty), float("inf"), message="length_penalty must be finite"),
    ]
    with tf.control_dependencies(checks):
        return [tf.identity(value) for value in (max_new_tokens, temperature, num_beams, length_penalty, seed)]


def decode(step, state, max_new_tokens, temperature, num_beams, length_penalty, seed,
           start_id, end_id, vocabulary_size, banned_ids=(0, 1)):
    """Decodes B rows, each greedily, by seeded sampling or by beam search, as its controls ask.

    Args:
        step: step(state, token_ids, index) -> (logits, state).
            token_ids: int32 [N], the last token of every hypothesis (start_id at index 0).
            index: int32 scalar, the position of token_ids in the target sequence (0 for the
                start token).
            logits: float32 [N, vocabulary_size] for the next token; state: the same nested
                structure and shapes as given (tensors with leading axis N).
        state: a tf.nest structure of tensors for the B rows, leading axis B. Each row is repeated
            K = max(num_beams) times (tf.repeat(x, K, axis=0): row r's hypotheses are at
            r*K .. r*K+K-1) and reordered with tf.gather on axis 0 as beams are selected.
        max_new_tokens: int32 [B], >= 1.
        temperature: float32 [B], >= 0; used by rows with num_beams 1 (0 = greedy).
        num_beams: int32 [B], >= 1; 1 = greedy or sampling, more = beam search.
        length_penalty: float32 [B], GNMT's alpha for beam rows (0 = raw log-probability;
            larger values favour longer hypotheses).
        seed: int64 [B], the sampling rows' random streams.
        start_id, end_id: the target's start and end token ids.
        vocabulary_size: V, the width of the logits.
        banned_ids: ids never generated (padding, unknown, start).

    Returns:
        {"token_ids": int32 [B, L] with L = max(max_new_tokens): the generated tokens, without
             the start token and without end_id, 0-padded after the end;
         "lengths": int32 [B], the number of tokens in each row of token_ids;
         "score": float32 [B], the sum of the natural-log probabilities (log_softmax of the
             logits, not renormalized over the allowed ids, not scaled by temperature) of the
             chosen tokens, end_id included when it was generated; without the length penalty}

    Rows with num_beams 1 take argmax(logits / temperature + Gumbel noise) over the allowed ids
    (the Gumbel-max trick; no noise and no scaling at temperature 0), the noise being
    keraslm.generation.uniform_noise(seed, index): a function of the row's seed and the position
    alone. They stop at end_id or after max_new_tokens tokens.

    Rows with num_beams k > 1 run tensor2tensor's beam search over log_softmax(logits), with alive
    and finished hypotheses kept apart. Every step extends the k alive hypotheses by every allowed
    token and takes the 2k best extensions by log-probability: the k best of them that are not
    end_id become the alive hypotheses (there are at least k, since each hypothesis has one
    end_id extension); those that are end_id are finished candidates, ranked by GNMT's normalized
    score logp / ((5 + length) / 6) ** length_penalty, length counting end_id. Only the best
    finished hypothesis is kept, not tensor2tensor's k: it is the only one returned, and the
    alive hypotheses never depend on the finished ones. The result is that best finished
    hypothesis; the best alive one only if none finished within max_new_tokens. A row stops at
    max_new_tokens, or once no alive hypothesis can overtake its best finished one: an extension's
    log-probability is at most its prefix's, so alive logp / max(penalty at the next length,
    penalty at max_new_tokens) bounds every score still to come, and stopping there returns
    exactly what running on would (tensor2tensor's own bound assumes length_penalty >= 0).
    Slots beyond a row's own k stay at log-probability -inf and the 2k best are the row's own,
    so each row gets beam search with exactly its num_beams.

    The loop ends as soon as every row is done. The hypotheses of finished rows keep being
    stepped (shapes are fixed) but their results no longer change.
    """
    if isinstance(end_id, int) and end_id in tuple(banned_ids):
        raise ValueError(f"end_id {end_id} is among banned_ids {tuple(banned_ids)}: no row could ever end")
    max_new_tokens, temperature, num_beams, length_penalty, seed = _validated(
        max_new_tokens, temperature, num_beams, length_penalty, seed
    )
    batch_size = tf.size(max_new_tokens)
    num_slots = tf.maximum(tf.reduce_max(num_beams), 1)  # K; at least 1 so an empty batch still traces
    total = tf.maximum(tf.reduce_max(max_new_tokens), 0)  # L
    num_hypotheses = batch_size * num_slots  # N = B * K
    end_id = tf.cast(end_id, tf.int32)

    is_beam_row = num_beams > 1  # (B,)
    any_beam_row = tf.reduce_any(is_beam_row)
    any_single_row = ~tf.reduce_all(is_beam_row)
    is_sampled_row = ~is_beam_row & (temperature > 0)  # (B,)
    any_sampled = tf.reduce_any(is_sampled_row)
    # Sampling rows divide by their temperature; greedy and beam rows use the logits as they are.
    inverse_temperature = tf.where(is_sampled_row, 1.0 / tf.maximum(temperature, 1e-6), 1.0)  # (B,)
    slots = tf.range(num_slots)  # (K,)
    in_row_beams = slots[None, :] < tf.where(is_beam_row, num_beams, 1)[:, None]  # (B, K)
    banned = tf.reduce_any(
        tf.equal(tf.range(vocabulary_size)[:, None], tf.reshape(tf.constant(banned_ids, tf.int32), [1, -1])), axis=1
    )  # (V,)
    # Added to the logits: one pass over (N, V) that keeps banned ids from being chosen.
    ban = tf.where(banned, float("-inf"), 0.0)  # (V,)
    num_candidates = 2 * num_slots  # 2K covers every row's 2k
    # Each hypothesis's own 2K best tokens hold every one of the row's 2K best extensions.
    per_hypothesis = tf.minimum(num_candidates, vocabulary_size)
    ranks = tf.range(num_candidates)[None, :]  # (1, 2K)
    positions = tf.range(total)  # (L,)
    negative_infinity = tf.constant(float("-inf"), tf.float32)

    def body(index, last_tokens, state, alive_tokens, alive_logp, generated, done,
             best_tokens, best_logp, best_score, best_length, has_finished):
        logits, state = step(state, last_tokens, index)
        logits = tf.cast(logits, tf.float32)  # (N, V)
        # log_softmax(logits) = logits - normalizer, taken only where a token is chosen: the
        # (N, V) log-probabilities are never built.
        normalizer = tf.reduce_logsumexp(logits, axis=1)  # (N,)
        length = index + 1  # tokens in a hypothesis once this step's token is added

        # === Beam rows: tensor2tensor's step over the row's 2k best extensions ===
        def best_extensions():
            """(B, 2K) log-probabilities, slots and tokens of the best extensions, best first."""
            # A shift per hypothesis keeps the order, so the top tokens of the logits are those of
            # the log-probabilities; then the best of the K * 2K per row. top_k is stable (ties
            # go to the lower index), so this is the order of one top_k over every (slot, token).
            values, tokens = tf.math.top_k(logits + ban, k=per_hypothesis)  # (N, 2K)
            extended = tf.reshape(alive_logp, [-1, 1]) + values - normalizer[:, None]
            extended = tf.reshape(extended, [batch_size, num_slots * per_hypothesis])
            top_logp, choice = tf.math.top_k(extended, k=num_candidates)  # (B, 2K)
            tokens = tf.gather(tf.reshape(tokens, [batch_size, -1]), choice, batch_dims=1)
            return top_logp, choice // per_hypothesis, tokens

        def no_beam_rows():
            shape = tf.stack([batch_size, num_candidates])
            return tf.fill(shape, negative_infinity), tf.zeros(shape, tf.int32), tf.zeros(shape, tf.int32)

        top_logp, top_origin, top_tokens = tf.cond(any_beam_row, best_extensions, no_beam_rows)
        top_ends = tf.equal(top_tokens, end_id)
        # The k best that don't end stay alive, best first; there are at least k, since each of
        # the k hypotheses has one end_id extension.
        _, alive_ranks = tf.math.top_k(tf.where(top_ends, -num_candidates, -ranks), k=num_slots)  # (B, K)
        beam_logp = tf.where(in_row_beams, tf.gather(top_logp, alive_ranks, batch_dims=1), negative_infinity)
        beam_origin = tf.gather(top_origin, alive_ranks, batch_dims=1)
        beam_tokens = tf.gather(top_tokens, alive_ranks, batch_dims=1)
        # Those that end among the row's own 2k best are finished candidates.
        end_logp = tf.where(top_ends & (ranks < 2 * num_beams[:, None]), top_logp, negative_infinity)  # (B, 2K)
        end_score = end_logp / length_penalty_divisor(length, length_penalty)[:, None]
        candidate = tf.argmax(end_score, axis=1, output_type=tf.int32)  # (B,) a rank
        candidate_score = tf.gather(end_score, candidate, batch_dims=1)
        beam_improves = candidate_score > best_score

        # === Greedy and sampling rows: one hypothesis, in slot 0 ===
        def sample():
            """(B,) the chosen tokens and their log-probabilities."""
            first_logits = logits[::num_slots]  # (B, V)

            def gumbel():
                uniform = uniform_noise(seed, [index], vocabulary_size)[0]  # (B, V) float64
                noise = tf.cast(-tf.math.log(-tf.math.log(uniform)), tf.float32)
                return noise * tf.cast(is_sampled_row, tf.float32)[:, None]

            # The ban is added after scaling, which could otherwise undo it.
            scaled = first_logits * inverse_temperature[:, None] + ban
            scaled = tf.cond(any_sampled, lambda: scaled + gumbel(), lambda: scaled)
            tokens = tf.argmax(scaled, axis=1, output_type=tf.int32)
            return tokens, tf.gather(first_logits, tokens, batch_dims=1) - normalizer[::num_slots]

        sampled, sampled_token_logp = tf.cond(
            any_single_row, sample, lambda: (tf.zeros([batch_size], tf.int32), tf.zeros([batch_size]))
        )
        sampled_logp = alive_logp[:, 0] + sampled_token_logp  # (B,)
        sampled_end = tf.equal(sampled, end_id)
        first_slot = tf.equal(slots, 0)[None, :]  # (1, K)

        # === Both kinds: alive hypotheses, the best finished one, done rows ===
        beam_row = is_beam_row[:, None]
        origin = tf.where(beam_row, beam_origin, 0)
        new_tokens = tf.where(beam_row, beam_tokens, sampled[:, None])
        new_logp = tf.where(beam_row, beam_logp, tf.where(first_slot, sampled_logp[:, None], negative_infinity))
        active = ~done[:, None]
        # Done rows keep their hypotheses in place; their results are final.
        origin = tf.where(active, origin, slots[None, :])
        new_tokens = tf.where(active, new_tokens, tf.reshape(last_tokens, [batch_size, num_slots]))
        new_logp = tf.where(active, new_logp, alive_logp)

        finishes = ~done & tf.where(is_beam_row, beam_improves, sampled_end)  # (B,)
        finished_slot = tf.where(is_beam_row, tf.gather(top_origin, candidate, batch_dims=1), 0)
        # A finished hypothesis is its alive prefix (before this step's token) and end_id, which
        # token_ids leave out.
        best_tokens = tf.where(finishes[:, None], tf.gather(alive_tokens, finished_slot, batch_dims=1), best_tokens)
        best_logp = tf.where(finishes, tf.where(is_beam_row, tf.gather(end_logp, candidate, batch_dims=1), sampled_logp),
                             best_logp)
        best_score = tf.where(finishes, tf.where(is_beam_row, candidate_score, sampled_logp), best_score)
        best_length = tf.where(finishes, index, best_length)
        has_finished |= finishes

        alive_tokens = tf.gather(alive_tokens, origin, batch_dims=1)  # (B, K, L)
        written = tf.equal(positions, index)[None, None, :] & active[:, :, None]
        alive_tokens = tf.where(written, new_tokens[:, :, None], alive_tokens)
        flat_origin = tf.reshape(tf.range(batch_size)[:, None] * num_slots + origin, [-1])  # (N,)
        state = tf.nest.map_structure(lambda tensor: tf.gather(tensor, flat_origin), state)
        generated += tf.cast(~done, tf.int32)

        # Beam rows end when nothing alive can overtake the best finished hypothesis (see the
        # docstring), sampling rows at end_id; every row at its max_new_tokens.
        best_alive = tf.reduce_max(new_logp, axis=1)  # (B,)
        largest_divisor = tf.maximum(
            length_penalty_divisor(length + 1, length_penalty), length_penalty_divisor(max_new_tokens, length_penalty)
        )
        settled = tf.where(is_beam_row, best_score >= best_alive / largest_divisor, sampled_end)
        done |= settled | (length >= max_new_tokens)
        return (index + 1, tf.reshape(new_tokens, [-1]), state, alive_tokens, new_logp, generated, done,
                best_tokens, best_logp, best_score, best_length, has_finished)

    state = tf.nest.map_structure(lambda tensor: tf.repeat(tensor, num_slots, axis=0), state)
    # All K slots of a row start as the same hypothesis; only slot 0 is alive, or a beam row's
    # first step would pick the same extension K times.
    alive_logp = tf.where(tf.equal(tf.tile(slots[None, :], [batch_size, 1]), 0), 0.0, negative_infinity)  # (B, K)
    loop_vars = (
        tf.constant(0),
        tf.fill([num_hypotheses], tf.cast(start_id, tf.int32)),
        state,
        tf.zeros([batch_size, num_slots, total], tf.int32),  # alive tokens
        alive_logp,
        tf.zeros([batch_size], tf.int32),  # generated: steps each row took
        tf.zeros([batch_size], tf.bool),  # done
        tf.zeros([batch_size, total], tf.int32),  # best finished tokens
        tf.zeros([batch_size]),  # its logp
        tf.fill([batch_size], negative_infinity),  # its normalized score
        tf.zeros([batch_size], tf.int32),  # its length without end_id
        tf.zeros([batch_size], tf.bool),  # has_finished
    )
    # The step may return state with a known leading axis where the repeated input had none.
    invariants = tf.nest.map_structure(lambda tensor: tf.TensorShape([None]).concatenate(tensor.shape[1:]), loop_vars)
    invariants = (tf.TensorShape([]),) + invariants[1:]

    def body_keeping_ranks(*loop_vars):
        # tf.where loses static ranks over dimensions that are unknown; the loop needs them back.
        outputs = body(*loop_vars)
        for output, invariant in zip(tf.nest.flatten(outputs), tf.nest.flatten(invariants)):
            output.set_shape(invariant)
        return outputs

    outputs = tf.while_loop(
        lambda index, *rest: (index < total) & ~tf.reduce_all(rest[5]),
        body_keeping_ranks,
        loop_vars,
        shape_invariants=invariants,
        parallel_iterations=1,
    )
    _, _, _, alive_tokens, alive_logp, generated, _, best_tokens, best_logp, _, best_length, has_finished = outputs

    # Rows where nothing finished return their best alive hypothesis, max_new_tokens long.
    best_alive = tf.argmax(alive_logp, axis=1, output_type=tf.int32)  # (B,)
    return {
        "token_ids": tf.where(has_finished[:, None], best_tokens, tf.gather(alive_tokens, best_alive, batch_dims=1)),
        "lengths": tf.where(has_finished, best_length, generated),
        "score": tf.where(has_finished, best_logp, tf.gather(alive_logp, best_alive, batch_dims=1)),
    }
