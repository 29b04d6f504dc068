"""keraslm: raw text to trained Keras language models, exported as SavedModels that take raw strings."""

__version__ = "0.1.0"
