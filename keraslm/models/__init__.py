"""Model builders. Models take `vocabulary_size` and never see a tokenizer or data."""

from keraslm.models.lstm import LSTMStepper, build_lstm_lm
from keraslm.models.transformer import RecomputeStepper, TransformerCachedStepper, build_transformer_lm


def build_model(config, use_cudnn="auto"):
    """A Keras functional model from a ModelConfig: token ids (B, T) -> logits (B, T, V).

    use_cudnn (LSTM only): Keras picks the cuDNN kernel when a GPU is present ("auto"); False
    keeps the portable kernel, which exports need (cuDNN ops have no CPU implementation).
    """
    config.validate()
    if config.model == "transformer":
        return build_transformer_lm(
            vocabulary_size=config.vocabulary_size,
            sequence_length=config.sequence_length,
            hidden_dim=config.hidden_dim,
            intermediate_dim=config.resolved_intermediate_dim(),
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            dropout=config.dropout,
        )
    return build_lstm_lm(
        vocabulary_size=config.vocabulary_size,
        hidden_dim=config.hidden_dim,
        num_layers=config.num_layers,
        dropout=config.dropout,
        use_cudnn=use_cudnn,
    )


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
