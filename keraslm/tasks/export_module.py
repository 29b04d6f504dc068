"""What every task's SavedModel root shares: the tokenizer, the config asset and the weights.

Only the model's variables are tracked, not the Keras model object (as keras.export does): the
SavedModel then holds plain TF functions and variables and loads with tensorflow and
tensorflow_text alone, in TF Serving or any TF1-style Session.
"""

import tensorflow as tf


def tf_variable(variable):
    """The tf.Variable a Keras 3 variable holds (outside any autocast scope, `.value` is it)."""
    value = getattr(variable, "value", variable)
    return value if isinstance(value, tf.Variable) else variable


class ExportModule(tf.Module):
    """Base of the task's export modules; subclasses add tf.functions and `signatures()`."""

    def __init__(self, model, tokenizer, config_path):
        super().__init__(name="keraslm")
        self.tokenizer = tokenizer
        self.config_file = tf.saved_model.Asset(config_path)
        # The tf.Variables inside Keras 3's variables, not the Keras wrappers: a tracked wrapper
        # is saved as a second copy of each variable, which the checkpoint restores while the
        # functions read the first, so TF Serving and every TF1-style loader found the weights
        # uninitialized ("Could not find variable ..."; keras-team/keras#20095). Only
        # tf.saved_model.load, which pairs them up, could run those exports.
        self.model_variables = [tf_variable(variable) for variable in model.variables]

    def signatures(self):
        """{signature name: tf.function with an input signature} for tf.saved_model.save.

        The tf.functions, not concrete functions traced beforehand: tf.saved_model.save traces
        every function again inside its save context (a different cache key), so a concrete
        function traced outside it became a second copy of the whole graph in saved_model.pb.
        """
        raise NotImplementedError

    def warmup_requests(self):
        """[(signature name, {input name: numpy array})]: requests that run every function a
        server's first real requests would, so that it prepares them at load time
        (assets.extra/tf_serving_warmup_requests, read by TF Serving and keraslm-serve)."""
        return []
