"""keraslm: raw text to trained Keras language models, exported as SavedModels that take raw strings."""

__version__ = "0.1.0"


def load(model_dir):
    """Loads an exported language model: `.generate(prompts, ...)`, `.score(texts)`.

    `model_dir` is a SavedModel version directory or its base directory (latest version).
    Imported on first use, so `import keraslm` stays light.
    """
    from keraslm.inference import load as load_saved_model

    return load_saved_model(model_dir)
