"""tf.distribute strategies for training: which one, on which devices, and which process writes.

  --strategy=default       one device (TensorFlow's default strategy)
  --strategy=mirrored      MirroredStrategy over every local GPU, or --num_cpu_devices logical CPUs
  --strategy=multi_worker  MultiWorkerMirroredStrategy over the cluster in TF_CONFIG

The strategy is created before any other TensorFlow op runs: logical CPU devices and a
multi-worker cluster can only be configured before TensorFlow initializes its runtime.

Under multi_worker every worker runs the same training loop (model.fit, evaluation and
checkpoint saves are collective: all workers must take part), but only the chief (task type
"chief", or worker 0 when the cluster has no chief) writes the work directory. The others save
their checkpoints into a private temporary directory that is removed right after each save, as
TensorFlow's multi-worker guide does, and restore from the chief's checkpoints.

Keras 3.15's model.fit runs under MultiWorkerMirroredStrategy only with two fixes to its glue
(keras-team/keras#20585, tensorflow/tensorflow#72388), made here and nowhere else:
`_KerasMultiWorkerFixes`. The multi-worker tests pin them.
"""

import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading

import keras
import tensorflow as tf

from keraslm.errors import InvalidInputError, UserInputError

# How long a collective op (a gradient all-reduce, a checkpoint save) may wait for the other
# workers before it fails. A killed worker makes the others fail at once (the connection is
# reset); this bounds the wait when a machine vanishes without a word. It must exceed the longest
# stretch of work only some workers do between two collectives: the chief writing metrics.json,
# the loss curve and its checkpoint (seconds).
COLLECTIVE_TIMEOUT_SECONDS = 300


class WorkerLostError(UserInputError):
    """A multi-worker run lost one of its workers; rerunning every worker's command resumes it."""


def create_strategy(train):
    """The tf.distribute.Strategy that --strategy names; call it before any other TensorFlow op."""
    if train.strategy == "default":
        return tf.distribute.get_strategy()
    if train.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_mirrored_devices(train.num_cpu_devices))
    return _multi_worker_strategy()


def _mirrored_devices(num_cpu_devices):
    if not num_cpu_devices:
        gpus = tf.config.list_physical_devices("GPU")
        # Without GPUs MirroredStrategy runs on the one CPU (one replica).
        return [f"/gpu:{index}" for index in range(len(gpus))] or ["/cpu:0"]
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(num_cpu_devices)]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != num_cpu_devices:
        try:
            tf.config.set_logical_device_configuration(cpu, wanted)
        except RuntimeError:
            raise InvalidInputError(
                f"--num_cpu_devices={num_cpu_devices}: TensorFlow has already started in this process with other "
                "devices; run training in a new process"
            ) from None
    return [f"/cpu:{index}" for index in range(num_cpu_devices)]


def _multi_worker_strategy():
    _check_tf_config()
    config = json.loads(os.environ["TF_CONFIG"])
    task = config["task"]
    addresses = [address for job in ("chief", "worker") for address in config["cluster"].get(job, [])]
    print(
        f"keraslm: {task['type']} {task['index']} waiting until every worker of the cluster has started "
        f"({', '.join(addresses)}; TF_CONFIG)",
        file=sys.stderr,
        flush=True,
    )
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        # The constructor blocks in C++ until every worker has joined, where Python runs no
        # signal handler: Ctrl-C must end the process at once rather than never.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    # SIGTERM cannot end a worker while it waits here: TensorFlow's coordination agent installs
    # its own SIGTERM handler (the preemption notifier, in C++) as it starts, and the main thread
    # waits in C++ holding the GIL, so no Python thread can put the default back until the
    # constructor returns (tried: a thread calling libc's signal() never ran). Ctrl-C and SIGKILL
    # do end it; the README says so.
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS)
    )
    _KerasMultiWorkerFixes.install()
    if main_thread:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # TensorFlow's multi-worker runtime takes SIGTERM as a preemption notice and trains on
        # (for tf.distribute's PreemptionCheckpointHandler, unused here), so `kill PID` would not
        # stop a worker. Back to the default: SIGTERM ends it, as it ends one-process training.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy


def _check_tf_config():
    """TF_CONFIG must describe a cluster and this process's task (a chief or worker) in it."""
    text = os.environ.get("TF_CONFIG", "")
    advice = (
        'set it on every machine, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
        '"task": {"type": "worker", "index": 0}}\' (index 1 on the second machine)'
    )
    if not text.strip():
        raise InvalidInputError(f"--strategy=multi_worker needs the TF_CONFIG environment variable; {advice}")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise InvalidInputError(f"TF_CONFIG is not valid JSON ({error}); {advice}") from None
    try:
        cluster, task = config["cluster"], config["task"]
        addresses = cluster[task["type"]]
        index = task["index"]
        valid = (
            task["type"] in ("chief", "worker")
            and isinstance(addresses, list)
            and isinstance(index, int)
            and 0 <= index < len(addresses)
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidInputError(
            "TF_CONFIG is not a cluster with this process's task in it (it needs \"cluster\" and a \"task\" of type "
            f"\"worker\" or \"chief\" whose index is in the cluster); {advice}"
        )


# === Who does what ===


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.cluster_resolver.task_type is not None


def is_chief(strategy):
    """Whether this process writes the run: always, except for a multi-worker run's other workers."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def describe(strategy):
    """', 2 replicas on 2 workers (MultiWorkerMirroredStrategy)' for the start-up line; '' by default."""
    if not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
        return ""
    replicas = strategy.num_replicas_in_sync
    where, name = "", "MirroredStrategy"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        jobs = strategy.cluster_resolver.cluster_spec().as_dict()
        workers = sum(len(jobs.get(job, [])) for job in ("chief", "worker")) or 1
        where, name = f" on {workers} worker{'s' if workers > 1 else ''}", "MultiWorkerMirroredStrategy"
    return f", {replicas} replica{'s' if replicas > 1 else ''}{where} ({name})"


def check_batch_size(train, strategy):
    """--batch_size is the global batch: every replica gets the same share of it."""
    replicas = strategy.num_replicas_in_sync
    if train.batch_size % replicas:
        raise InvalidInputError(
            f"--batch_size={train.batch_size} is the global batch and must split evenly over the {replicas} replicas "
            f"of --strategy={train.strategy}; use a multiple of {replicas}"
        )


def chief_address():
    """host:port of a multi-worker cluster's chief (from TF_CONFIG)."""
    cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
    return cluster["chief"][0] if cluster.get("chief") else cluster["worker"][0]


def chief_reachable(timeout_seconds=5.0):
    """Whether the chief's TensorFlow server still accepts connections: for workers waiting on the
    chief outside any collective op (which would fail on their own when a peer dies)."""
    host, port = chief_address().rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def check_same_checkpoint(strategy, step, where):
    """Under multi_worker, every worker must have restored the same step from the shared work
    directory; a worker that restored another (a directory that is not shared, or a file system
    that showed it an older state) would train other weights in the same all-reduce."""
    if not is_multi_worker(strategy):
        return
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, tf.constant(float(step), tf.float64), axis=None)
    if float(mean) != float(step):
        resolver = strategy.cluster_resolver
        raise InvalidInputError(
            f"{where}: {resolver.task_type} {resolver.task_id} resumes from step {step}, but not every worker does "
            f"(their mean is {float(mean):g}); --work_dir must be one directory that every worker shares"
        )


def wait_for_each_other(strategy, timeout_seconds=3600):
    """Under multi_worker, returns once every worker has called it (a no-op otherwise).

    The other workers wait here for the chief to finish its own work (the export) instead of
    leaving the cluster under it, which TensorFlow's coordination service would report on the
    chief as crashed tasks.
    """
    if not is_multi_worker(strategy):
        return
    try:
        strategy.extended.reduce_to(
            tf.distribute.ReduceOp.SUM,
            tf.constant(1.0),
            destinations=strategy.extended.worker_devices[0],
            options=tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds),
        )
    except tf.errors.OpError as error:
        lost = worker_lost(error, strategy, last_saved_step=None)
        if lost is None:
            raise
        raise lost from None


# === The optimizer ===


class AdamW(keras.optimizers.AdamW):
    """Keras' AdamW, whose global_clipnorm clips the gradient summed over replicas, as on one device.

    Keras 3.15 clips each replica's share of the gradient before the all-reduce sums them
    (BaseOptimizer._backend_apply_gradients clips, TFOptimizer._backend_update_step then
    all-reduces), so two replicas each clipped half a batch's gradient on its own: other updates
    than one device makes whenever clipping acts, which early in training is most steps. Here,
    with several replicas, the clipping moves after the all-reduce. With one replica nothing
    changes (clipping comes before weight decay there, and after it here: they do not interact).
    """

    def _replicated(self):
        return self._distribution_strategy.num_replicas_in_sync > 1

    def _clip_gradients(self, grads):
        return grads if self._replicated() else super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        summed = super()._all_reduce_sum_gradients(grads_and_vars)
        if not self._replicated():
            return summed
        clipped = iter(super()._clip_gradients([grad for grad, _ in summed if grad is not None]))
        return [(None if grad is None else next(clipped), variable) for grad, variable in summed]


class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' loss-scale optimizer (mixed_float16), deciding on overflow for all replicas at once.

    Keras 3.15 checks each replica's own gradients for inf/NaN, before they are summed, and acts
    on the first local replica's verdict: a step that overflows on one replica only would be
    applied by the others (the inf in the sum makes every weight NaN), and under multi_worker
    one worker would enter the gradient all-reduce that another skips, waiting until the
    collective timeout. Here every replica gets the verdict on the summed gradients: finite
    only if all replicas' are.
    """

    def check_finite(self, grads):
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        overflowed = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
        return tf.equal(overflowed, 0.0)


# === Checkpoints of the other workers ===


class WorkerCheckpoints:
    """A non-chief worker's side of a collective checkpoint save.

    tf.train.Checkpoint saves under MultiWorkerMirroredStrategy run collective ops, so every
    worker must save when the chief does; this one writes into a private temporary directory,
    removed right after each save (TensorFlow's multi-worker guide does the same). Only the
    chief's checkpoints/ is kept, and every worker restores from it.
    """

    def __init__(self, checkpoint):
        self._checkpoint = checkpoint

    def save(self, checkpoint_number):
        directory = tempfile.mkdtemp(prefix="keraslm-worker-checkpoint-")
        try:
            manager = tf.train.CheckpointManager(self._checkpoint, directory, max_to_keep=1)
            return manager.save(checkpoint_number=checkpoint_number)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


# === When a worker dies ===

# What a collective op raises on the workers left when another one dies (connection reset,
# aborted collectives) or stops answering (COLLECTIVE_TIMEOUT_SECONDS).
_PEER_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


def worker_lost(error, strategy, last_saved_step):
    """A WorkerLostError for a collective op that failed because another worker is gone, else None."""
    if not is_multi_worker(strategy) or not isinstance(error, tf.errors.OpError):
        return None
    message = (getattr(error, "message", "") or str(error)).strip()
    if not isinstance(error, _PEER_FAILURES) and "collective" not in message.lower():
        return None
    # "... Collective ops is aborted by: <why>\nAdditional GRPC error information ...": the why.
    lines = message.split("aborted by:", 1)[-1].strip().splitlines() or [type(error).__name__]
    # "The following tasks are unhealthy (stopped sending heartbeats):" is followed by the tasks.
    reason = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    reason = re.sub(r"\{\{[^}]*\}\}\s*", "", reason).split("; last error", 1)[0][:160]
    resolver = strategy.cluster_resolver
    if last_saved_step is None:  # After training (wait_for_each_other).
        kept = "training had finished"
    else:
        kept = f"the last checkpoint is step {last_saved_step}" if last_saved_step else "no checkpoint was written yet"
    return WorkerLostError(
        f"--strategy=multi_worker: {resolver.task_type} {resolver.task_id} lost contact with another worker "
        f"({reason}); {kept}. Rerun the same command on every worker to resume"
    )


# === Keras 3.15 under MultiWorkerMirroredStrategy ===


class _KerasMultiWorkerFixes:
    """Two places where Keras 3.15's TensorFlow trainer breaks under MultiWorkerMirroredStrategy.

    1. Every fit/evaluate call first builds the model from a data batch that it all-reduces with
       `strategy.reduce("MEAN", batch)`; MultiWorkerMirroredStrategy cannot reduce a nested batch
       ("Attempt to convert a value (PerReplica...) to a Tensor"). `build_model` builds it from the
       dataset's element_spec instead (only shapes and dtypes are read) and skips that step.
    2. The step's scalar logs (the loss, metrics) are averaged over replicas with
       `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars ("Invalid reduction
       dimension 0 for input with 0 dimensions"); the patched `reduce_per_replica` averages them
       with axis=None, every other case is Keras' own.
    Both were checked against keras 3.15.1 (keras/src/backend/tensorflow/trainer.py).
    """

    _installed = False

    @classmethod
    def install(cls):
        if cls._installed:
            return
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer as keras_trainer

        keras_reduce = keras_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction in ("auto", "mean") and is_multi_worker(strategy):
                # With one replica per worker the values are plain tensors, still to be
                # averaged over the workers: reduce every one, as Keras means to.
                return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
            return keras_reduce(values, strategy, reduction)

        keras_trainer.reduce_per_replica = reduce_per_replica
        cls._installed = True

    @staticmethod
    def build_model(model, strategy, element_spec):
        with strategy.scope():
            model._symbolic_build(data_batch=element_spec)  # pylint: disable=protected-access
        # Everything is built now; Keras' own build step would only all-reduce a batch and fail.
        model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None  # pylint: disable=protected-access


def prepare_for_fit(model, strategy, dataset):
    """Readies a compiled model built under `strategy` for model.fit / evaluate on `dataset`.

    Needed under multi_worker only (see _KerasMultiWorkerFixes); a no-op otherwise and once done.
    """
    if is_multi_worker(strategy) and not getattr(model, "_keraslm_multi_worker_ready", False):
        _KerasMultiWorkerFixes.build_model(model, strategy, dataset.element_spec)
        model._keraslm_multi_worker_ready = True  # pylint: disable=protected-access
