"""--grad_accum_steps: one optimizer step on batch_size × N examples, in N micro-batches.

Each call of the train step reads the batch a run with --batch_size=batch_size × N and no
accumulation reads at the same step, splits it into N micro-batches of batch_size, sums their
gradients in a loop (one micro-batch's activations alive at a time; an embedding's gradient rows
are kept, as the larger batch's are) and applies their average once.
So model.fit's steps, optimizer.iterations, the learning-rate schedule, steps_per_execution and
checkpoints all count optimizer steps, and resuming reads exactly the batches an uninterrupted
run would.

Keras' own `Optimizer(gradient_accumulation_steps=N)` was measured (Keras 3.15) and not used:
- its learning-rate schedule is called with the micro-step counter (`_iterations`, not the
  `iterations` Adam's bias correction reads), so warmup and cosine decay would run N× too fast,
  and AdamW's weight decay, which is scaled by that learning rate, with them;
- under mixed_float16 the LossScaleOptimizer skips a micro-step whose gradients overflow
  without the accumulator knowing, so the accumulation window slides: later updates mix
  micro-batches of two optimizer steps, and a segment (and its checkpoint) can end mid-window;
- under tf.distribute.MirroredStrategy it does not trace (`merge_call` inside its `cond`).
Here the loss-scale optimizer sees one averaged gradient per step, skipping the whole step on
overflow as it would the N×-larger batch; clipping and weight decay apply once, to the average.

The step below is Keras' TensorFlow `train_step` (keras/src/backend/tensorflow/trainer.py,
Keras 3.15) with the gradient computed per micro-batch. It reads one private attribute,
`Model._loss_tracker` (the `loss` log Keras' own step keeps); tests/test_grad_accum.py checks
that the logged loss and the weights after one step match those of the N×-larger batch.
"""

import dataclasses
import functools

import keras
import tensorflow as tf

from keraslm.errors import InvalidInputError


def accumulate_gradients(model, steps):
    """Makes each train step of the compiled `model` one optimizer step over `steps`
    micro-batches of the batch it is given (steps > 1)."""
    # An instance attribute: Keras' make_train_function traces `self.train_step`.
    model.train_step = functools.partial(_train_step, model, steps)


def optimizer_step_batch_size(train):
    """The examples (lm, mlm: windows) one optimizer step reads."""
    return train.batch_size * train.grad_accum_steps


def optimizer_step_config(config):
    """`config` with the batch size of one optimizer step: what the task's training batches are
    cut to (evaluation keeps --batch_size)."""
    train = dataclasses.replace(config.train, batch_size=optimizer_step_batch_size(config.train))
    return dataclasses.replace(config, train=train)


def check_batches(dataset, train):
    """The batches must split into grad_accum_steps equal micro-batches: a classifier's batch is
    cut to its whole training set when that is smaller."""
    rows = tf.nest.flatten(dataset.element_spec)[0].shape[0]
    steps = train.grad_accum_steps
    if rows is not None and rows % steps:
        raise InvalidInputError(
            f"--batch_size={train.batch_size} × --grad_accum_steps={steps} asks for "
            f"{optimizer_step_batch_size(train)} examples per optimizer step, but the training set has only {rows}, "
            f"which does not split into {steps} equal micro-batches; lower --batch_size or --grad_accum_steps"
        )


def _micro_batches(tensor, steps):
    """(steps * B, ...) -> (steps, B, ...): micro-batch i is rows [i * B, (i + 1) * B)."""
    if tensor is None:
        return None
    # Known dimensions stay static (XLA compiles for them); a classifier's width is not known.
    shape = [
        dimension if dimension is not None else tf.shape(tensor)[axis + 1] for axis, dimension in enumerate(tensor.shape[1:])
    ]
    return tf.reshape(tensor, [steps, -1, *shape])


def _train_step(model, steps, data):
    micro_batches = tf.nest.map_structure(lambda tensor: _micro_batches(tensor, steps), data)
    variables = model.trainable_weights

    def micro_batch(index):
        return tf.nest.map_structure(lambda tensor: None if tensor is None else tensor[index], micro_batches)

    def micro_batch_gradients(batch):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, sample_weight, training=True)
            # The `loss` log: a running mean over micro-batches weighted by their rows, which is
            # the mean over the whole batch. Keras scales the loss by 1/replicas for the sum
            # across replicas; the log shows it unscaled.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            rows = tf.shape(next(tensor for tensor in tf.nest.flatten(x) if tensor is not None))[0]
            loss_tracker = model._loss_tracker  # pylint: disable=protected-access
            loss_tracker.update_state(loss * tf.cast(replicas, loss.dtype), sample_weight=rows)
            # Each micro-batch's share of the mean, before the backward pass: its gradients are
            # then those of its rows within the larger batch (float16 ones overflow as those would).
            loss = model.optimizer.scale_loss(loss / steps)
        gradients = tape.gradient(loss, variables)
        model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return gradients

    # What each gradient is, from a trace that never runs: None (a variable the loss does not
    # reach, which the optimizer then leaves alone, as in Keras' own step), a tensor, or the rows
    # of an embedding (IndexedSlices, one per token). Those rows are kept, not summed: Keras'
    # Adam squares each row of IndexedSlices apart (its second moment then sums the squares of a
    # token's rows), so the larger batch's step is matched only by handing it the same rows.
    kinds = tf.function(micro_batch_gradients, autograph=False).get_concrete_function(micro_batch(0)).structured_outputs
    reached = [position for position, kind in enumerate(kinds) if kind is not None]

    def initial(position):
        kind = kinds[position]
        if isinstance(kind, tf.IndexedSlices):
            return (
                tf.TensorArray(kind.values.dtype, size=steps, element_shape=kind.values.shape),
                tf.TensorArray(kind.indices.dtype, size=steps, element_shape=kind.indices.shape),
            )
        return tf.zeros(variables[position].shape, variables[position].dtype)

    def body(index, accumulated):
        gradients = micro_batch_gradients(micro_batch(index))
        updated = []
        for position, total in zip(reached, accumulated):
            if isinstance(total, tuple):
                values, indices = total
                gradient = gradients[position]
                updated.append((values.write(index, gradient.values), indices.write(index, gradient.indices)))
            else:
                updated.append(total + tf.convert_to_tensor(gradients[position]))
        return index + 1, updated

    # parallel_iterations=1: micro-batches run one after another, so only one holds activations.
    _, accumulated = tf.while_loop(
        lambda index, accumulated: index < steps,
        body,
        (tf.constant(0), [initial(position) for position in reached]),
        parallel_iterations=1,
    )
    gradients = [None] * len(variables)
    for position, total in zip(reached, accumulated):
        if isinstance(total, tuple):
            values, indices = total
            width = values.element_shape[1:]
            gradients[position] = tf.IndexedSlices(
                tf.reshape(values.stack(), [-1, *width]),  # (steps * rows, ...): the larger batch's rows, in order
                tf.reshape(indices.stack(), [-1]),
                tf.constant(list(variables[position].shape), kinds[position].indices.dtype),
            )
        else:
            gradients[position] = total
    model.optimizer.apply_gradients(zip(gradients, variables))
    return model.get_metrics_result()
