"""Masked-LM pretraining: raw text -> Transformer encoder + masked-token head (BERT's objective).

The text, its tokenizer and its windows are the language model's (keraslm.tasks.lm): the corpus
is one token stream cut into windows of --sequence_length at random offsets, crossing document
boundaries (RoBERTa's full-sentence packing). keras-nlp's MaskedLMMaskGenerator then selects 15%
of each window's tokens: 80% of those become [MASK], 10% a random token, 10% stay, and the model
predicts the originals. [PAD] is never selected. [MASK] is one id past the tokenizer's
vocabulary (--extra_ids), so every tokenizer kind works unchanged and a classifier fine-tuned
from the encoder never sees it.

The mask generator draws from TensorFlow's stateful random ops, which take no seed from keraslm:
the windows of two runs with the same --seed are the same, but their masks are not, so their
losses differ slightly (unlike --task=lm and classify, whose runs repeat exactly), and a resumed
run masks its windows anew. The validation windows are masked once per run and cached, so every
evaluation of a run scores the same masked tokens.

Evaluation reports the masked-token loss and accuracy. The run is not exported: fine-tune it with
`keraslm-train --task=classify --init_from=<this work dir>`.
"""

import math

import keras
import keras_nlp
import tensorflow as tf

from keraslm.backbones import build_backbone
from keraslm.errors import InvalidInputError
from keraslm.tasks.lm import LanguageModelTask
from keraslm.tasks.mlm_model import build_masked_language_model

MASK_SELECTION_RATE = 0.15
# Masked positions kept per window: 15% on average, room for chance excess (BERT: 76 of 512).
MASK_SELECTION_HEADROOM = 1.5


def mask_selection_length(sequence_length):
    return max(1, math.ceil(sequence_length * MASK_SELECTION_RATE * MASK_SELECTION_HEADROOM))


class MaskedLanguageModelTask(LanguageModelTask):
    name = "mlm"
    # What the throughput record counts: tokens read per second (as the LM's).
    throughput_unit = "tokens"
    exportable = False

    def resolve(self, config):
        """One id past the tokenizer's vocabulary is [MASK]; the encoder reads both directions."""
        config.model.extra_ids = 1
        config.model.causal = False

    def build_model(self, config, use_cudnn="auto"):
        backbone = build_backbone(config.model, causal=False, use_cudnn=use_cudnn)
        return build_masked_language_model(backbone, config.model.vocabulary_size)

    def compile_args(self, config):
        del config
        return {
            # The mean over the masked positions only (padding of the selection has weight 0).
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
            "weighted_metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        }

    def _masker(self, config):
        mask_token_id = config.model.vocabulary_size - 1  # The reserved id past the tokenizer's.
        generator = keras_nlp.layers.MaskedLMMaskGenerator(
            # keras-nlp wants the [MASK] id inside the vocabulary it draws random replacements from.
            vocabulary_size=config.model.vocabulary_size,
            mask_selection_rate=MASK_SELECTION_RATE,
            mask_token_id=mask_token_id,
            mask_selection_length=mask_selection_length(config.model.sequence_length),
            unselectable_token_ids=[0],  # [PAD]
        )

        def mask(inputs, targets):
            del targets  # The LM's next tokens; MLM predicts the masked ones instead.
            masked = generator(inputs)
            features = {"token_ids": masked["token_ids"], "mask_positions": tf.cast(masked["mask_positions"], tf.int32)}
            return features, masked["mask_ids"], masked["mask_weights"]

        return mask

    def train_dataset(self, prepared, config, start_step, num_steps):
        windows = super().train_dataset(prepared, config, start_step, num_steps)
        return windows.map(self._masker(config), num_parallel_calls=2).prefetch(2)

    def eval_dataset(self, prepared, config):
        windows = super().eval_dataset(prepared, config)
        # Masked once: every evaluation scores the same positions. The cache holds the masked
        # validation windows in memory (about 7 bytes per token): bound it with --eval_steps on a
        # corpus whose held-out part is large.
        return windows.map(self._masker(config)).cache()

    def export_module(self, model, tokenizer, config, export_config, config_path):
        raise not_exportable()


def not_exportable(work_dir=None):
    where = f" {work_dir}" if work_dir else ""
    return InvalidInputError(
        f"a --task=mlm run{where} pretrains an encoder and has no serving signature to export; fine-tune it with "
        f"keraslm-train --task=classify --init_from={work_dir or '<its work dir>'} and export that"
    )

