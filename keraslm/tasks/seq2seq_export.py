"""The translation model's SavedModel root: raw source strings in, translated strings out.

Signatures, every input batched with one value per row:

  serving_default: source (string) -> translation (string), with the export's defaults
                   (--num_beams, --length_penalty, --max_new_tokens).
  translate:       source (string), max_new_tokens (int32), temperature (float32; 0 = greedy,
                   used only when num_beams is 1), num_beams (int32; 1 = greedy or sampling),
                   length_penalty (float32), seed (int64; sampling only)
                   -> translation (string), num_tokens (int32), score (float32: the summed
                   natural-log probability of the translation's tokens and END).

The encoder runs once per request; the decoding loop, beam search included, runs inside the
graph (keraslm.seq2seq_decoding), so a TF Serving client gets beam-searched translations with no
Python. The model is built without cuDNN kernels and called without XLA: the SavedModel runs on
a CPU-only TF Serving and loads with tensorflow and tensorflow_text alone.
"""

import types

import numpy as np
import tensorflow as tf

from keraslm.config import MAX_BEAMS
from keraslm.seq2seq_decoding import decode
from keraslm.tasks.export_module import ExportModule
from keraslm.tasks.seq2seq_model import Seq2SeqDecoder, end_id, start_id
from keraslm.tokenizers import NUM_SPECIAL_TOKENS, PAD_ID

_TRANSLATE_SIGNATURE = {
    "source": tf.TensorSpec([None], tf.string, name="source"),
    "max_new_tokens": tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
    "temperature": tf.TensorSpec([None], tf.float32, name="temperature"),
    "num_beams": tf.TensorSpec([None], tf.int32, name="num_beams"),
    "length_penalty": tf.TensorSpec([None], tf.float32, name="length_penalty"),
    "seed": tf.TensorSpec([None], tf.int64, name="seed"),
}


def export_settings(run_config, export_config):
    """The decoding defaults serving_default uses, as stored in the export's config asset."""
    limit = run_config.model.sequence_length - 1  # START takes the first target position.
    return {
        "max_new_tokens": min(export_config.max_new_tokens, limit),
        "max_new_tokens_limit": limit,
        "num_beams": export_config.num_beams,
        "length_penalty": export_config.length_penalty,
        "temperature": 0.0,
        "kv_cache": export_config.kv_cache,
    }


class TranslatorServer(ExportModule):
    """Tokenizer + encoder-decoder weights + decoding loop."""

    def __init__(self, model, tokenizer, run_config, export_config, config_path):
        super().__init__(model, tokenizer, config_path)
        self._settings = export_settings(run_config, export_config)
        vocabulary_size = run_config.model.vocabulary_size
        self._keras = types.SimpleNamespace(  # Not tracked: no Keras in the SavedModel.
            decoder=Seq2SeqDecoder(
                model, run_config.model, max_length=run_config.model.sequence_length, kv_cache=export_config.kv_cache
            )
        )
        self._sequence_length = run_config.model.sequence_length
        self._start, self._end, self._vocabulary_size = start_id(vocabulary_size), end_id(vocabulary_size), vocabulary_size
        self.serving_default = tf.function(
            self._serving_default, input_signature=[tf.TensorSpec([None], tf.string, name="source")], autograph=False
        )
        self.translate = tf.function(self._translate, input_signature=[_TRANSLATE_SIGNATURE], autograph=False)

    def signatures(self):
        return {
            "serving_default": self.serving_default,
            "translate": self.translate,
        }

    def warmup_requests(self):
        rows = np.array([b"warm-up", b"Hello."], dtype=object)
        requests = [("serving_default", {"source": rows})]
        for beams in (1, 4):
            requests.append(
                (
                    "translate",
                    {
                        "source": rows,
                        "max_new_tokens": np.array([4, 4], np.int32),
                        "temperature": np.array([0.0, 0.0], np.float32),
                        "num_beams": np.array([beams, beams], np.int32),
                        "length_penalty": np.array([0.6, 0.6], np.float32),
                        "seed": np.array([0, 0], np.int64),
                    },
                )
            )
        return requests

    def _serving_default(self, source):
        batch = tf.shape(source)[:1]
        settings = self._settings
        inputs = {
            "source": source,
            "max_new_tokens": tf.fill(batch, tf.constant(settings["max_new_tokens"], tf.int32)),
            "temperature": tf.zeros(batch, tf.float32),
            "num_beams": tf.fill(batch, tf.constant(settings["num_beams"], tf.int32)),
            "length_penalty": tf.fill(batch, tf.constant(settings["length_penalty"], tf.float32)),
            "seed": tf.zeros(batch, tf.int64),
        }
        return {"translation": self._translate(inputs)["translation"]}

    def _checks(self, inputs):
        """What keraslm.seq2seq_decoding.decode does not check itself (it checks each control's
        range): one value per source, and this export's limits."""
        batch = tf.size(inputs["source"])
        limit = self._settings["max_new_tokens_limit"]
        checks = [
            tf.debugging.assert_equal(tf.size(value), batch, message=f"{name} must have one value per source")
            for name, value in inputs.items()
        ]
        return checks + [
            tf.debugging.assert_less_equal(
                inputs["max_new_tokens"], limit, message=f"max_new_tokens must be at most {limit}"
            ),
            tf.debugging.assert_less_equal(inputs["num_beams"], MAX_BEAMS, message=f"num_beams must be at most {MAX_BEAMS}"),
        ]

    def _translate(self, inputs):
        with tf.control_dependencies(self._checks(inputs)):
            source = tf.identity(inputs["source"])
        ids = self.tokenizer.tokenize(source, keep_whitespace=False)[:, : self._sequence_length]
        # An empty source gives no tokens; one [PAD] column keeps the batch a valid (B, 1) tensor.
        dense = ids.to_tensor(default_value=PAD_ID)
        dense = tf.pad(dense, [[0, 0], [0, tf.maximum(0, 1 - tf.shape(dense)[1])]])
        decoder = self._keras.decoder
        end = self._end

        def step(state, token_ids, index):
            # END is not a translation's first token: an empty translation is never the answer a
            # user wants, and beam search found it for hard sources (its log-probability can beat
            # that of any whole sentence).
            logits, state = decoder.step(state, token_ids, index)
            is_end = tf.logical_and(tf.equal(tf.range(tf.shape(logits)[-1]), end), tf.equal(index, 0))
            return tf.where(is_end[None, :], tf.float32.min, logits), state

        outputs = decode(
            step,
            decoder.encode(dense),
            max_new_tokens=inputs["max_new_tokens"],
            temperature=inputs["temperature"],
            num_beams=inputs["num_beams"],
            length_penalty=inputs["length_penalty"],
            seed=inputs["seed"],
            start_id=self._start,
            end_id=self._end,
            vocabulary_size=self._vocabulary_size,
            # [PAD], [UNK] and START are never generated.
            banned_ids=tuple(range(NUM_SPECIAL_TOKENS)) + (self._start,),
        )
        translation = tf.strings.strip(self.tokenizer.detokenize(outputs["token_ids"]))
        # A source with no tokens (empty, or only whitespace) has nothing to translate: an empty
        # translation, not a sentence the decoder makes up from nothing.
        empty = tf.equal(ids.row_lengths(), 0)
        return {
            "translation": tf.where(empty, "", translation),
            "num_tokens": tf.where(empty, 0, outputs["lengths"]),
            "score": tf.where(empty, 0.0, outputs["score"]),
        }
