"""Backbones map token ids (B, T) to hidden states (B, T, H) and know nothing of heads or tasks.

They take `vocabulary_size` from the config and never see a tokenizer or data. Each is a Keras
functional model named "backbone", so that a task nests it under its head and a checkpoint keeps
it apart (keraslm.training).
"""

from keraslm.backbones.lstm import build_lstm_backbone
from keraslm.backbones.transformer import build_transformer_backbone


def build_backbone(config, causal, use_cudnn="auto", whole_texts=None):
    """The backbone a ModelConfig names.

    causal=True (language modelling, and classifiers fine-tuned from a language model): each
    position sees only its past, the Transformer decoder or a unidirectional LSTM; texts are
    padded on the right, so no real position ever sees padding. causal=False (tasks that read a
    whole text at once): the Transformer encoder with a padding mask, or a bidirectional LSTM
    that skips padding. whole_texts (default: not causal): the input is padded whole texts, not
    an LM's windows, and the LSTM's embedding gets --dropout. use_cudnn (LSTM only): Keras picks
    the cuDNN kernel when a GPU is present ("auto"); False keeps the portable kernel, which
    exports need (cuDNN ops have no CPU implementation).
    """
    whole_texts = not causal if whole_texts is None else whole_texts
    config.validate()
    if config.model == "transformer":
        return build_transformer_backbone(
            vocabulary_size=config.vocabulary_size,
            sequence_length=config.sequence_length,
            hidden_dim=config.hidden_dim,
            intermediate_dim=config.resolved_intermediate_dim(),
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            dropout=config.dropout,
            causal=causal,
        )
    return build_lstm_backbone(
        vocabulary_size=config.vocabulary_size,
        hidden_dim=config.hidden_dim,
        num_layers=config.num_layers,
        dropout=config.dropout,
        bidirectional=not causal,
        mask_zero=not causal,
        # Reading whole texts, an embedding dropout regularizes; an LM keeps its tested setting.
        # (A layer without weights: a pretrained LM's checkpoint fits either way.)
        embedding_dropout=config.dropout if whole_texts else 0.0,
        use_cudnn=use_cudnn,
    )
