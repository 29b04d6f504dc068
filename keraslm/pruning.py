"""--prune_sparsity: magnitude pruning of kernels and embeddings to a target share of zeros during training.

There is no Keras 3 port of the TF Model Optimization toolkit's pruning (its wrappers are tf.keras 2
layers), so this is the same idea in a callback and a mask per weight:
- which weights: every trainable float kernel (Dense, EinsumDense, the classifier and LM heads),
  LSTM kernel and recurrent_kernel, and token Embedding table. Never biases (an attention bias is
  rank 2 but still a bias), normalization scales, or a Transformer's position embeddings: that table
  (sequence_length × hidden_dim) is a few thousand weights, and each of its rows is added to every
  token at that position, so zeros there would cost every input for no size;
- how: per tensor, the round(sparsity × size) weights of least magnitude are zeroed (ties broken by
  position, so the count is exact);
- when: TF-MOT's PolynomialDecay with power 3, from sparsity 0 at --prune_begin_step to the target
  at --prune_end_step, masks recomputed every --prune_frequency steps of that ramp and at its end
  (TF-MOT can miss the end when the frequency does not divide the ramp), then fixed.

After every optimizer step the masks are applied again, so that Adam's momentum and weight decay
cannot revive a pruned weight: each mask is the weight's Keras `constraint`, which the optimizer
applies right after its update. That runs inside the compiled step, so it holds under
--steps_per_execution, --grad_accum_steps (one optimizer step per Keras batch) and under a
tf.distribute strategy (Keras assigns the constrained value on every replica).

The masks are not checkpointed: pruned weights are exactly zero, so a resumed run rebuilds them from
the restored weights, at the sparsity of the last mask update before its step (those zeros are then
exactly the weights of least magnitude), and goes on with the next update where the uninterrupted
run would have. The masks are recomputed in Python between steps: with --steps_per_execution > 1
Keras reports steps once per execution, so an update falls at the end of the execution that crosses
its step (the final weights are exactly as sparse either way).
"""

import keras
import numpy as np
import tensorflow as tf

# Weight names (the last part of a variable's path) that are pruned, and layer names that never are.
PRUNED_WEIGHTS = ("kernel", "recurrent_kernel", "embeddings")
NEVER_PRUNED_LAYERS = ("position_embedding",)


def sparsity_at(train, step):
    """The scheduled share of zeros after `step` optimizer steps (0 before --prune_begin_step)."""
    begin, end = train.prune_begin_step, train.resolved_prune_end_step()
    if step < begin:
        return 0.0
    progress = min(1.0, (step - begin) / (end - begin))
    return train.prune_sparsity * (1.0 - (1.0 - progress) ** 3)


def last_update_step(train, step):
    """The last step <= `step` at which masks are recomputed, or None before --prune_begin_step."""
    begin, end = train.prune_begin_step, train.resolved_prune_end_step()
    if step < begin:
        return None
    if step >= end:
        return end
    return begin + (step - begin) // train.prune_frequency * train.prune_frequency


def prunable_weights(model):
    """The model's weights that pruning zeroes, in model order."""
    chosen = []
    for variable in model.trainable_weights:
        parts = variable.path.split("/")
        if (
            parts[-1] in PRUNED_WEIGHTS
            and len(variable.shape) >= 2
            and keras.backend.is_float_dtype(variable.dtype)
            and not any(part in NEVER_PRUNED_LAYERS for part in parts)
        ):
            chosen.append(variable)
    return chosen


def magnitude_mask(values, sparsity):
    """1 for the weights kept, 0 for the round(sparsity × size) of least magnitude; as values' dtype."""
    flat = np.abs(values).ravel()
    pruned = min(int(round(sparsity * flat.size)), flat.size - 1)
    mask = np.ones(flat.size, dtype=values.dtype)
    # A stable sort: among equal magnitudes (the zeros of an earlier mask) the first ones go first.
    mask[np.argsort(flat, kind="stable")[:pruned]] = 0
    return mask.reshape(values.shape)


def zero_share(variables):
    """The share of exactly-zero values over all `variables` together."""
    zeros = sum(int(np.count_nonzero(variable.numpy() == 0)) for variable in variables)
    return zeros / max(1, sum(int(np.prod(variable.shape)) for variable in variables))


class _Mask(keras.constraints.Constraint):
    """The weight times its mask: what the optimizer assigns after each update."""

    def __init__(self, mask):
        self.mask = mask

    def __call__(self, weight):
        return weight * tf.cast(self.mask, weight.dtype)


class Pruner(keras.callbacks.Callback):
    """Holds a mask per prunable weight of `model` and updates them on schedule.

    Build it in the strategy's scope (the masks are mirrored like the weights), call start(step)
    once the weights are restored, and pass it to every fit call with first_step set to the step
    the call starts from.
    """

    def __init__(self, model, train):
        super().__init__()
        self.train = train
        self.pruned_weights = prunable_weights(model)
        self.masks = []
        for weight in self.pruned_weights:
            # Not tracked by the model's checkpoint: rebuilt from the weights on resume (start).
            mask = tf.Variable(tf.ones(weight.shape, weight.dtype), trainable=False, name="prune_mask")
            weight.constraint = _Mask(mask)
            self.masks.append(mask)
        self.first_step = 0
        self.updated_at = None

    def start(self, step):
        """A run (new or resumed) at `step`: the masks of the last update up to it, applied."""
        self.first_step = step
        self.updated_at = last_update_step(self.train, step)
        if self.updated_at is not None:
            self._update(sparsity_at(self.train, self.updated_at))

    def on_train_batch_end(self, batch, logs=None):
        step = self.first_step + batch + 1
        due = last_update_step(self.train, step)
        if due is not None and due != self.updated_at:
            self.updated_at = due
            self._update(sparsity_at(self.train, due))

    def _update(self, sparsity):
        for weight, mask in zip(self.pruned_weights, self.masks):
            values = weight.numpy()
            new_mask = magnitude_mask(values, sparsity)
            mask.assign(new_mask)
            weight.assign(values * new_mask)

    def sparsity(self):
        """The share of zeros the pruned weights hold now."""
        return zero_share(self.pruned_weights)
