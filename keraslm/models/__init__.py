"""Model builders. Models take `vocabulary_size` and never see a tokenizer or data."""

from keraslm.models.lstm import LSTMStepper, build_lstm_lm
from keraslm.models.transformer import TransformerStepper, build_transformer_lm


def build_model(config):
    """A Keras functional model from a ModelConfig: token ids (B, T) -> logits (B, T, V)."""
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
    )


def make_stepper(model, config):
    """The incremental next-token function generation uses for this model kind."""
    if config.model == "transformer":
        return TransformerStepper(model, config.sequence_length)
    return LSTMStepper(model, config.num_layers)
