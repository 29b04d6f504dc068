"""Encoder-decoder translation models: source ids + target prefix -> next-token logits.

  --model=transformer: the Transformer encoder backbone (keras-nlp `TransformerEncoder` blocks,
      padding mask) and a stack of keras-nlp `TransformerDecoder` blocks with cross-attention.
  --model=lstm: a bidirectional LSTM encoder backbone and an LSTM decoder whose outputs attend to
      the encoder's (Keras' dot-product `Attention`, Luong et al. 2015), started from the
      encoder's mean state.

Both read one joint vocabulary (one tokenizer for both languages, keraslm.tasks.seq2seq says why)
plus two ids past it: START, which opens every target, and END, which closes it. The encoder is
the layer named "backbone", which checkpoints keep apart from the decoder.

`Seq2SeqDecoder` runs the trained layers one target position at a time for the export's decoding
loop: the Transformer's self-attention keys/values are cached (and the cross-attention's computed
once per request), the LSTM carries its state. It calls only the layers' public call arguments
(keras-nlp's cache arguments), no private attributes.
"""

import keras
import keras_nlp
import tensorflow as tf

from keraslm.backbones import build_backbone
from keraslm.backbones.activations import gelu_tanh

# The two ids a translation model reserves past its tokenizer's vocabulary.
NUM_EXTRA_IDS = 2


def start_id(vocabulary_size):
    """The id that opens every target sequence (vocabulary_size: the model's, extra ids included)."""
    return vocabulary_size - 2


def end_id(vocabulary_size):
    return vocabulary_size - 1


def build_seq2seq_model(config, use_cudnn="auto"):
    """{encoder_token_ids (B, S), decoder_token_ids (B, T)} -> logits (B, T, vocabulary_size), float32.

    decoder_token_ids are START followed by the target's tokens; logits at position t predict
    target token t (END after the last). 0 is padding on both sides.
    """
    encoder = build_backbone(config, causal=False, use_cudnn=use_cudnn, whole_texts=True)
    if config.model == "transformer":
        return _build_transformer(config, encoder)
    return _build_lstm(config, encoder, use_cudnn)


def _build_transformer(config, encoder):
    # === Layers ===
    embedding = keras_nlp.layers.TokenAndPositionEmbedding(
        vocabulary_size=config.vocabulary_size,
        sequence_length=config.sequence_length,
        embedding_dim=config.hidden_dim,
        name="decoder_embedding",
    )
    embedding_dropout = keras.layers.Dropout(config.dropout, name="decoder_embedding_dropout")
    blocks = [
        keras_nlp.layers.TransformerDecoder(
            intermediate_dim=config.resolved_intermediate_dim(),
            num_heads=config.num_heads,
            dropout=config.dropout,
            activation=gelu_tanh,
            normalize_first=True,
            name=f"cross_decoder_{index}",
        )
        for index in range(config.num_layers)
    ]
    final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="decoder_norm")
    to_logits = keras.layers.Dense(config.vocabulary_size, dtype="float32", name="logits")

    # === Functional Model ===
    encoder_ids = keras.Input(shape=(None,), dtype="int32", name="encoder_token_ids")
    decoder_ids = keras.Input(shape=(None,), dtype="int32", name="decoder_token_ids")
    encoded = encoder(encoder_ids)  # (B, S, H)
    encoder_mask = keras.ops.not_equal(encoder_ids, 0)
    decoder_mask = keras.ops.not_equal(decoder_ids, 0)
    x = embedding_dropout(embedding(decoder_ids))  # (B, T, H)
    for block in blocks:
        # Causal self-attention over the target prefix, cross-attention to the source's tokens.
        x = block(x, encoder_sequence=encoded, decoder_padding_mask=decoder_mask, encoder_padding_mask=encoder_mask)
    logits = to_logits(final_norm(x))  # (B, T, V)
    return keras.Model({"encoder_token_ids": encoder_ids, "decoder_token_ids": decoder_ids}, logits, name="seq2seq")


class MaskedMean(keras.layers.Layer):
    """(hidden (B, S, D), mask (B, S)) -> the mean of the unpadded positions (B, D); no weights."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # The mask arrives as an explicit input; the one Keras attaches to `hidden` is consumed.
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, hidden, mask):
        weights = keras.ops.cast(mask, hidden.dtype)[:, :, None]
        return keras.ops.sum(hidden * weights, axis=1) / keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)


def _build_lstm(config, encoder, use_cudnn):
    units = config.hidden_dim
    # === Layers ===
    embedding = keras.layers.Embedding(config.vocabulary_size, units, name="decoder_embedding")
    embedding_dropout = keras.layers.Dropout(config.dropout, name="decoder_embedding_dropout")
    # The decoder's first (h, c) for every layer: the mean of the unpadded encoder states through
    # a tanh Dense layer (Bahdanau et al. 2015 start from the backward state; the mean works for
    # any direction). Plain Dense layers in the functional graph: a checkpoint finds each by name.
    encoder_mean = MaskedMean(name="encoder_mean")
    start_states = [
        keras.layers.Dense(2 * units, activation="tanh", name=f"decoder_start_{i}") for i in range(config.num_layers)
    ]
    # Projects the bidirectional encoder's 2H outputs to the decoder's H for dot-product scores.
    memory = keras.layers.Dense(units, use_bias=False, name="memory")
    recurrent = [
        keras.layers.LSTM(units, return_sequences=True, return_state=True, use_cudnn=use_cudnn, name=f"decoder_lstm_{i}")
        for i in range(config.num_layers)
    ]
    attention = keras.layers.Attention(name="attention")
    # Luong's attentional hidden state: tanh(W [context; output]).
    combine = keras.layers.Dense(units, activation="tanh", name="combine")
    output_dropout = keras.layers.Dropout(config.dropout, name="decoder_output_dropout")
    to_logits = keras.layers.Dense(config.vocabulary_size, dtype="float32", name="logits")

    # === Functional Model ===
    encoder_ids = keras.Input(shape=(None,), dtype="int32", name="encoder_token_ids")
    decoder_ids = keras.Input(shape=(None,), dtype="int32", name="decoder_token_ids")
    encoded = encoder(encoder_ids)  # (B, S, 2H)
    encoder_mask = keras.ops.not_equal(encoder_ids, 0)
    states = _start_states(encoder_mean(encoded, encoder_mask), start_states, units)
    keys = memory(encoded)  # (B, S, H)
    x = embedding_dropout(embedding(decoder_ids))  # (B, T, H)
    for index, layer in enumerate(recurrent):
        # Right padding only: the padded positions' outputs are never read by the loss.
        x, _, _ = layer(x, initial_state=states[2 * index : 2 * index + 2])
    context = attention([x, encoded, keys], mask=[None, encoder_mask])  # [query, value, key]  # (B, T, 2H)
    hidden = combine(keras.ops.concatenate([x, context], axis=-1))
    logits = to_logits(output_dropout(hidden))
    return keras.Model({"encoder_token_ids": encoder_ids, "decoder_token_ids": decoder_ids}, logits, name="seq2seq")


def _start_states(mean, layers, units):
    """[h_0, c_0, h_1, c_1, ...] from the encoder's mean state."""
    states = []
    for layer in layers:
        both = layer(mean)
        states += [both[:, :units], both[:, units:]]
    return states


class Seq2SeqDecoder:
    """The trained model's layers, called one target position at a time (export decoding loop).

    encode(source_ids) -> state for B rows (every tensor's leading axis is B);
    step(state, token_ids (N,), index) -> (logits (N, V), state), the contract of
    keraslm.seq2seq_decoding.decode. kv_cache=False recomputes the whole target prefix at every
    step (exact; the benchmark's baseline).
    """

    def __init__(self, model, config, max_length, kv_cache=True):
        self.model, self.config = model, config
        self.max_length = max_length  # target positions: START + tokens
        self.kv_cache = kv_cache
        self.encoder = model.get_layer("backbone")
        self.lstm = config.model == "lstm"
        if self.lstm:
            self.recurrent = [model.get_layer(f"decoder_lstm_{i}") for i in range(config.num_layers)]
        else:
            self.blocks = [model.get_layer(f"cross_decoder_{i}") for i in range(config.num_layers)]

    def _layer(self, name):
        return self.model.get_layer(name)

    def encode(self, source_ids):
        encoded = self.encoder(source_ids, training=False)
        mask = tf.not_equal(source_ids, 0)
        state = {"encoded": encoded, "mask": mask}
        if self.lstm:
            layers = [self._layer(f"decoder_start_{i}") for i in range(self.config.num_layers)]
            starts = _start_states(self._layer("encoder_mean")(encoded, mask), layers, self.config.hidden_dim)
            state["keys"] = self._layer("memory")(encoded)
            state["h"] = tf.stack(starts[0::2], axis=1)  # (B, layers, H)
            state["c"] = tf.stack(starts[1::2], axis=1)
            return state
        batch = tf.shape(source_ids)[0]
        if not self.kv_cache:
            state["tokens"] = tf.zeros([batch, self.max_length], tf.int32)
            return state
        heads = self.config.num_heads
        head_dim = self.config.hidden_dim // heads
        dtype = encoded.dtype
        # The cross-attention keys/values depend only on the source: computed here, once per
        # request, by a first call at index 0 (keras-nlp fills a cache it is given at that index).
        x = self._layer("decoder_embedding")(tf.zeros([batch, 1], tf.int32), start_index=0)
        self_caches, cross_caches = [], []
        for block in self.blocks:
            self_cache = tf.zeros([batch, 2, self.max_length, heads, head_dim], dtype)
            cross_cache = tf.zeros([batch, 2, tf.shape(encoded)[1], heads, head_dim], dtype)
            x, self_cache, cross_cache = block(
                x,
                encoder_sequence=encoded,
                encoder_padding_mask=mask,
                self_attention_cache=self_cache,
                self_attention_cache_update_index=0,
                cross_attention_cache=cross_cache,
                cross_attention_cache_update_index=0,
            )
            self_caches.append(self_cache)
            cross_caches.append(cross_cache)
        state["self_cache"] = tf.stack(self_caches, axis=1)  # (B, layers, 2, L, heads, head_dim)
        state["cross_cache"] = tf.stack(cross_caches, axis=1)
        return state

    def step(self, state, token_ids, index):
        if self.lstm:
            return self._lstm_step(state, token_ids)
        if not self.kv_cache:
            return self._recompute_step(state, token_ids, index)
        x = self._layer("decoder_embedding")(token_ids[:, None], start_index=index)  # (N, 1, H)
        self_caches = []
        for layer, block in enumerate(self.blocks):
            x, self_cache, _ = block(
                x,
                # Needed by the call signature; with update index None the cache is read instead.
                encoder_sequence=state["encoded"],
                encoder_padding_mask=state["mask"],
                self_attention_cache=state["self_cache"][:, layer],
                self_attention_cache_update_index=index,
                cross_attention_cache=state["cross_cache"][:, layer],
                cross_attention_cache_update_index=None,
            )
            self_caches.append(self_cache)
        logits = self._layer("logits")(self._layer("decoder_norm")(x))[:, 0, :]
        return tf.cast(logits, tf.float32), {**state, "self_cache": tf.stack(self_caches, axis=1)}

    def _recompute_step(self, state, token_ids, index):
        tokens = tf.tensor_scatter_nd_update(
            tf.transpose(state["tokens"]), [[index]], token_ids[None, :]
        )
        tokens = tf.transpose(tokens)  # (N, L) with this position written
        prefix = tokens[:, : index + 1]
        x = self._layer("decoder_embedding")(prefix)
        for block in self.blocks:
            x = block(x, encoder_sequence=state["encoded"], decoder_padding_mask=tf.ones_like(prefix, tf.bool),
                      encoder_padding_mask=state["mask"])
        logits = self._layer("logits")(self._layer("decoder_norm")(x))[:, -1, :]
        return tf.cast(logits, tf.float32), {**state, "tokens": tokens}

    def _lstm_step(self, state, token_ids):
        x = self._layer("decoder_embedding")(token_ids[:, None])  # (N, 1, H)
        hs, cs = [], []
        for index, layer in enumerate(self.recurrent):
            x, h, c = layer(x, initial_state=[state["h"][:, index], state["c"][:, index]])
            hs.append(h)
            cs.append(c)
        context = self._layer("attention")([x, state["encoded"], state["keys"]], mask=[None, state["mask"]])
        hidden = self._layer("combine")(tf.concat([x, context], axis=-1))
        logits = self._layer("logits")(hidden)[:, 0, :]
        return tf.cast(logits, tf.float32), {**state, "h": tf.stack(hs, axis=1), "c": tf.stack(cs, axis=1)}
