"""Next-token steppers: how LM decoding gets the logits of one more token.

The cached steppers read the layers of a language model (keraslm.tasks.lm_model) and, for the
Transformer, private attributes of keras-nlp's attention layers; that knowledge stays here, in
the decoding code, and nowhere else.
"""

import math

import tensorflow as tf

from keraslm.quantization import dense_kernel, embedding_table


class RecomputeStepper:
    """Next-token logits by re-running the whole model on the visible context every step.

    The reference decoder: exact, and slow (each step costs a forward pass over the window).
    `window` is the Transformer's sequence_length; None (the LSTM) means the whole sequence.
    """

    def __init__(self, model, window=None):
        self.model = model
        self.window = window
        self.vocabulary_size = model.output_shape[-1]

    def initial_state(self, tokens, start):
        del tokens, start  # No state: every step sees its whole context.
        return ()

    def step(self, state, tokens, position, small_batch=False):
        """Logits (B, V) for `position` from the tokens before it."""
        del small_batch
        first = 0 if self.window is None else tf.maximum(0, position - self.window)
        logits = self.model(tokens[:, first:position], training=False)  # (B, <= S, V)
        return logits[:, -1, :], state


class TransformerCachedStepper:
    """Key/value-cache decoding: each step runs one token through the network.

    The prompt (and the kept context after a slide) goes through the keras-nlp layers in one
    pass that fills their self-attention caches. Steps are a hand-written single-token forward
    over the same weights: keras-nlp's cached call costs ~2x more graph ops per token, and the
    per-op overhead is what bounds small-batch decoding on a CPU (BENCHMARKS.md).

    The learned position table has sequence_length (S) rows, so the cache holds S tokens. When it
    is full the window slides: the last `keep` tokens are re-encoded at positions 0..keep-1 and
    decoding goes on, so the model sees between `keep` and S tokens of context. Where the window
    starts is a function of the absolute position alone (`window_start`), never of when the loop
    started, so a row's text does not depend on the other prompts in its batch.
    """

    def __init__(self, model, num_layers, sequence_length, keep=None):
        backbone = model.get_layer("backbone")
        self.embedding = backbone.get_layer("embedding")
        self.decoders = [backbone.get_layer(f"decoder_{index}") for index in range(num_layers)]
        self.final_norm = backbone.get_layer("final_norm")
        self.to_logits = model.get_layer("logits")
        self.vocabulary_size = self.to_logits.units
        attention = self.decoders[0]._self_attention_layer
        self.num_heads = attention._num_heads
        self.head_dim = attention._key_dim
        self.hidden_dim = self.num_heads * self.head_dim
        self.sequence_length = sequence_length
        # A quarter window of context after a slide: re-encoding it costs 1/3 of a step per token
        # (vs 1x for half a window), and a character model loses 0.003 nats by it (BENCHMARKS.md).
        self.keep = keep if keep is not None else max(1, sequence_length // 4)
        if not 0 < self.keep < sequence_length:
            raise ValueError(f"keep={self.keep} must be in [1, sequence_length={sequence_length})")
        self._weights = None

    # === Weights, read once per call outside the decoding loop ===

    def _read_weights(self):
        """Plain tensors for the step; LayerNorm scales and shifts folded into the next matmul.

        LayerNorm(x) @ W + b = normalize(x) @ (gamma[:, None] * W) + (beta @ W + b), so a step
        only normalizes. The attention scale 1/sqrt(head_dim) is folded into the query weights.
        An int8 export's kernels and embedding table are dequantized here, once per call
        (keraslm.quantization): the step reads the int8 weights, and multiplies in float32.
        """
        hidden = self.hidden_dim

        def fold(norm, kernel, bias):
            kernel = tf.cast(kernel, tf.float32)
            return norm.gamma[:, None] * kernel, tf.linalg.matvec(kernel, norm.beta, transpose_a=True) + bias

        layers = []
        scale = 1.0 / math.sqrt(self.head_dim)
        for decoder in self.decoders:
            attention = decoder._self_attention_layer
            query_scale = tf.concat([tf.fill([hidden], scale), tf.ones([2 * hidden])], axis=0)
            qkv_kernel = tf.concat(
                [tf.reshape(dense_kernel(dense), [hidden, hidden]) for dense in (attention._query_dense, attention._key_dense, attention._value_dense)],
                axis=1,
            )  # (H, 3H)
            qkv_bias = tf.concat(
                [tf.reshape(dense.bias, [hidden]) for dense in (attention._query_dense, attention._key_dense, attention._value_dense)],
                axis=0,
            )
            qkv_kernel, qkv_bias = fold(decoder._self_attention_layer_norm, qkv_kernel * query_scale, qkv_bias * query_scale)
            intermediate = decoder._feedforward_intermediate_dense
            ffn_kernel, ffn_bias = fold(decoder._feedforward_layer_norm, dense_kernel(intermediate), intermediate.bias)
            layers.append(
                {
                    "qkv_kernel": qkv_kernel,
                    "qkv_bias": qkv_bias,
                    "out_kernel": tf.reshape(dense_kernel(attention._output_dense), [hidden, hidden]),
                    "out_bias": tf.convert_to_tensor(attention._output_dense.bias),
                    "ffn_kernel": ffn_kernel,
                    "ffn_bias": ffn_bias,
                    "ffn_out_kernel": dense_kernel(decoder._feedforward_output_dense),
                    "ffn_out_bias": tf.convert_to_tensor(decoder._feedforward_output_dense.bias),
                    "epsilon": decoder._self_attention_layer_norm.epsilon,
                }
            )
        logits_kernel, logits_bias = fold(self.final_norm, dense_kernel(self.to_logits), self.to_logits.bias)
        return {
            "token_embedding": embedding_table(self.embedding.token_embedding),
            "position_embedding": tf.convert_to_tensor(self.embedding.position_embedding.position_embeddings),
            "layers": layers,
            "logits_kernel": logits_kernel,
            "logits_bias": logits_bias,
            "final_epsilon": self.final_norm.epsilon,
        }

    # === Prefill: the keras-nlp layers run the prompt; keys and values are taken on the way ===

    def _prefill(self, tokens):
        """Caches [(k, v)] with tokens (B, P) at positions 0..P-1.

        Each cache is (B * heads * S, head_dim): one row per (batch row, head, slot), so a step
        can overwrite its B * heads rows in place (see _forward_one) and attention reads it as
        (B, heads, S, head_dim) through a free reshape.

        keras-nlp's own cached call is not used: Keras writes its cache with slice_update, which
        on TensorFlow is XlaDynamicUpdateSlice, and a stock TF Serving has no XLA.
        """
        weights = self._weights
        batch_size, length = tf.shape(tokens)[0], tf.shape(tokens)[1]
        hidden, heads, head_dim = self.hidden_dim, self.num_heads, self.head_dim
        x = self.embedding(tokens)  # (B, P, H)
        caches = []
        for decoder, layer in zip(self.decoders, weights["layers"]):
            normalized = tf.reshape(_normalize(tf.cast(x, tf.float32), layer["epsilon"]), [-1, hidden])
            qkv = tf.nn.bias_add(tf.matmul(normalized, layer["qkv_kernel"]), layer["qkv_bias"])  # (B * P, 3H)
            cache = []
            for part in (1, 2):  # keys, values
                projected = tf.reshape(qkv[:, part * hidden : (part + 1) * hidden], [batch_size, length, heads, head_dim])
                projected = tf.transpose(projected, [0, 2, 1, 3])  # (B, heads, P, head_dim)
                projected = tf.pad(projected, [[0, 0], [0, 0], [0, self.sequence_length - length], [0, 0]])
                # DeepCopy gives each cache a buffer of its own: the in-place writes must never
                # touch a tensor anything else holds.
                cache.append(tf.raw_ops.DeepCopy(x=tf.reshape(projected, [-1, head_dim])))
            caches.append(tuple(cache))
            x = decoder(x, training=False)
        return caches

    def window_start(self, position):
        """First position of the window that holds the token at `position`.

        0 until the cache is full, then it jumps by S - keep each time the cache fills up again.
        """
        stride = self.sequence_length - self.keep
        return tf.where(
            position < self.sequence_length, 0, stride * ((position - self.sequence_length) // stride + 1)
        )

    def initial_state(self, tokens, start):
        """State after reading tokens[:, : start - 1]: (window start, caches).

        A prompt longer than the window is cut from the left: only the tokens of the window
        holding position start - 1 are encoded.
        """
        # Read once here, in the graph around the decoding loop, so the loop body captures them
        # as loop invariants instead of re-reading every variable every step.
        self._weights = self._read_weights()
        window_start = self.window_start(start - 1)
        return (window_start, self._prefill(tokens[:, window_start : start - 1]))

    # === One token ===

    def step(self, state, tokens, position, small_batch=False):
        """Reads tokens[:, position - 1]; returns logits (B, V) for `position` and the new state.

        small_batch picks the attention arithmetic that is faster for a few rows.
        """
        window_start, caches = state
        current = position - 1
        new_window_start = self.window_start(current)
        window_start, caches = tf.cond(
            new_window_start > window_start,
            lambda: (new_window_start, self._prefill(tokens[:, new_window_start:current])),
            lambda: (window_start, caches),
        )
        logits, caches = self._forward_one(tokens[:, current], current - window_start, caches, small_batch)
        return logits, (window_start, caches)

    def _forward_one(self, token, slot, caches, small_batch):
        weights = self._weights
        hidden, heads, head_dim, size = self.hidden_dim, self.num_heads, self.head_dim, self.sequence_length
        batch_size = tf.shape(token)[0]
        x = tf.gather(weights["token_embedding"], token) + weights["position_embedding"][slot]  # (B, H)
        # Slots after the current one hold nothing yet (or stale context): mask them out.
        slot_bias = tf.where(tf.range(size) <= slot, 0.0, -1e9)  # (S,)
        # The cache rows of this slot: (batch row * heads + head) * S + slot.
        rows = tf.range(batch_size * heads) * size + slot
        new_caches = []
        for layer, (key_cache, value_cache) in zip(weights["layers"], caches):
            qkv = tf.nn.bias_add(tf.matmul(_normalize(x, layer["epsilon"]), layer["qkv_kernel"]), layer["qkv_bias"])
            query = tf.reshape(qkv[:, :hidden], [batch_size, heads, 1, head_dim])
            # In place: tensor_scatter_nd_update would copy the whole cache every step, which at
            # batch 64 costs as much as the attention itself. The caches are private buffers
            # (DeepCopy in _prefill) threaded through the loop, so nothing else sees the writes.
            key_cache = tf.raw_ops.InplaceUpdate(x=key_cache, i=rows, v=tf.reshape(qkv[:, hidden : 2 * hidden], [-1, head_dim]))
            value_cache = tf.raw_ops.InplaceUpdate(x=value_cache, i=rows, v=tf.reshape(qkv[:, 2 * hidden :], [-1, head_dim]))
            keys = tf.reshape(key_cache, [batch_size, heads, size, head_dim])
            values = tf.reshape(value_cache, [batch_size, heads, size, head_dim])
            if small_batch:
                # Elementwise products and sums: at a few rows oneDNN's batched matmul costs
                # ~30 us of set-up per call, more than the arithmetic (1.4x faster at batch 1,
                # slower from batch 16 on: BENCHMARKS.md).
                scores = tf.reduce_sum(query * keys, axis=-1) + slot_bias  # (B, heads, S)
                attended = tf.reduce_sum(tf.nn.softmax(scores)[..., None] * values, axis=2)  # (B, heads, head_dim)
            else:
                scores = tf.matmul(query, keys, transpose_b=True) + slot_bias  # (B, heads, 1, S)
                attended = tf.matmul(tf.nn.softmax(scores), values)  # (B, heads, 1, head_dim)
            x += tf.nn.bias_add(tf.matmul(tf.reshape(attended, [batch_size, hidden]), layer["out_kernel"]), layer["out_bias"])
            h = tf.nn.bias_add(tf.matmul(_normalize(x, layer["epsilon"]), layer["ffn_kernel"]), layer["ffn_bias"])  # (B, I)
            x += tf.nn.bias_add(tf.matmul(tf.nn.gelu(h, approximate=True), layer["ffn_out_kernel"]), layer["ffn_out_bias"])
            new_caches.append((key_cache, value_cache))
        normalized = _normalize(x, weights["final_epsilon"])
        return tf.nn.bias_add(tf.matmul(normalized, weights["logits_kernel"]), weights["logits_bias"]), new_caches


def _normalize(x, epsilon):
    """LayerNorm without its scale and shift (folded into the next matmul): 7 ops."""
    centered = x - tf.reduce_mean(x, axis=-1, keepdims=True)
    return centered * tf.math.rsqrt(tf.reduce_mean(tf.square(centered), axis=-1, keepdims=True) + epsilon)


class LSTMStepper:
    """Next-token logits from the LSTM state: one cell step per token, no recomputation."""

    def __init__(self, model, num_layers):
        backbone = model.get_layer("backbone")
        self.embedding = backbone.get_layer("embedding")
        self.recurrent = [backbone.get_layer(f"lstm_{index}") for index in range(num_layers)]
        self.to_logits = model.get_layer("logits")
        self.vocabulary_size = self.to_logits.units

    def initial_state(self, tokens, start):
        """State [(h, c) per layer] after reading tokens[:, : start - 1]."""
        batch_size = tf.shape(tokens)[0]

        def read_prefix():
            x = self.embedding(tokens[:, : start - 1])
            states = []
            for layer in self.recurrent:
                x, h, c = layer(x, training=False)
                states.append((h, c))
            return states

        def zeros():
            return [
                (
                    tf.zeros([batch_size, layer.cell.units], layer.compute_dtype),
                    tf.zeros([batch_size, layer.cell.units], layer.compute_dtype),
                )
                for layer in self.recurrent
            ]

        # An LSTM over zero steps is not defined, so a one-token prefix starts from zeros.
        return tf.cond(start > 1, read_prefix, zeros)

    def step(self, state, tokens, position, small_batch=False):
        """Reads tokens[:, position - 1]; returns logits (B, V) for `position` and the new state."""
        del small_batch  # One formulation serves every batch size.
        x = self.embedding(tokens[:, position - 1])  # (B, hidden_dim)
        new_state = []
        for layer, (h, c) in zip(self.recurrent, state):
            x, (h, c) = layer.cell(x, [h, c], training=False)
            new_state.append((h, c))
        return self.to_logits(x), new_state


def make_stepper(model, config, kv_cache=True):
    """The next-token function generation uses for this model kind.

    kv_cache=False re-runs the model over the visible context at every step: the exact,
    slow reference that the cached steppers are checked and benchmarked against.
    """
    if not kv_cache:
        return RecomputeStepper(model, config.sequence_length if config.model == "transformer" else None)
    if config.model == "transformer":
        return TransformerCachedStepper(model, config.num_layers, config.sequence_length)
    return LSTMStepper(model, config.num_layers)
