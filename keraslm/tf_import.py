"""Imports TensorFlow quietly and lightly; the bottom of keraslm's import order.

It imports nothing of keraslm, so every module (and the CLIs) may import TensorFlow through it.

Quietly: TensorFlow's native start-up lines (CUDA probing, a `failed call to cuInit` error on
machines without a GPU, oneDNN notices) are held back. Lightly: `import tensorflow` runs
tensorflow/__init__.py, which imports the whole public API (about 1,700 modules) and all of
Keras; loading and running a SavedModel in a graph Session needs about 600 of them
(tensorflow.python.*). BENCHMARKS.md ("Start-up") has the times. The `tensorflow` module this
returns finishes its own import the first time anything reads one of its attributes (`tf.constant`,
`tf.keras`, `import tensorflow.compat.v1`), so code that uses it, and any `import tensorflow`
later in the process, see all of TensorFlow as usual.
"""

import contextlib
import glob
import importlib.util
import os
import sys
import tempfile
import threading

# The parts of TensorFlow that keraslm.inference runs a SavedModel with, imported without the
# public API (see the module docstring).
RUNTIME_MODULES = (
    "tensorflow.core.framework.graph_pb2",
    "tensorflow.core.protobuf.config_pb2",
    "tensorflow.core.protobuf.rewriter_config_pb2",
    "tensorflow.core.protobuf.saved_model_pb2",
    "tensorflow.python.client.session",
    "tensorflow.python.compat.v2_compat",
    "tensorflow.python.framework.config",
    "tensorflow.python.framework.dtypes",
    "tensorflow.python.framework.errors",
    "tensorflow.python.framework.importer",
    "tensorflow.python.framework.load_library",
    "tensorflow.python.framework.ops",
    "tensorflow.python.ops.array_ops",
    "tensorflow.python.ops.gen_functional_ops",
    "tensorflow.python.ops.gen_resource_variable_ops",
)

_lock = threading.RLock()
_state = {"completing": False, "done": False}


@contextlib.contextmanager
def native_stderr_captured():
    """Holds back what native code writes to file descriptor 2 inside the block.

    TensorFlow's C++ logging goes straight to descriptor 2, bypassing sys.stderr, and in TF 2.21
    part of it is printed before its log settings (TF_CPP_MIN_LOG_LEVEL) apply. What was written
    is dropped when the block succeeds and written out when it raises, so a real failure keeps
    its context.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # No descriptor 2 (a daemon): nothing to capture.
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def _keras_held_back():
    """Keeps `import tensorflow` from importing Keras.

    tensorflow/__init__.py ends by importing keras.src.optimizers (to register Keras optimizers
    for SavedModel loading), which imports all of Keras and matplotlib: about 1.5 s of start-up
    that loading keraslm's SavedModels never uses. None in sys.modules makes that import raise
    ImportError, which TensorFlow catches; `import keras` afterwards works as usual and registers
    the same optimizers.
    """
    blocked = "keras" not in sys.modules and "keras.src.optimizers" not in sys.modules
    if blocked:
        sys.modules["keras.src.optimizers"] = None
    try:
        yield
    finally:
        if blocked and sys.modules.get("keras.src.optimizers", 0) is None:
            del sys.modules["keras.src.optimizers"]


def _complete_import(module, spec):
    """Runs tensorflow/__init__.py in the module imported without it, once."""
    with _lock:
        if _state["done"] or _state["completing"]:
            return
        _state["completing"] = True
        try:
            # TensorFlow's __init__ reads and extends its own __path__ as a global name.
            module.__path__ = list(spec.submodule_search_locations)
            with native_stderr_captured(), _keras_held_back():
                spec.loader.exec_module(module)
            _state["done"] = True
        finally:
            _state["completing"] = False


def _deferred_tensorflow(spec):
    """A `tensorflow` package object whose __init__.py runs on first attribute access."""
    module = importlib.util.module_from_spec(spec)

    def __getattr__(name):  # PEP 562: called only for attributes the module does not have.
        # Dunder probes (inspect's __wrapped__, pytest's __test__) must not import all of TF;
        # __path__ must: importing a submodule of tensorflow (tensorflow.compat.v1) reads it.
        if name.startswith("__") and name.endswith("__") and name != "__path__":
            raise AttributeError(f"module 'tensorflow' has no attribute {name!r}")
        _complete_import(module, spec)
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'tensorflow' has no attribute {name!r}") from None

    module.__getattr__ = __getattr__
    return module


def import_tensorflow_quietly():
    """Returns the tensorflow module, imported (once) without its native start-up lines.

    Imports only the runtime (RUNTIME_MODULES); the rest of TensorFlow loads on first use of the
    returned module (module docstring).
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    # Hides TF's native INFO and WARNING lines after start-up (XLA compilation notices); a value
    # the user set is kept.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    spec = importlib.util.find_spec("tensorflow")
    if spec is None:
        raise ImportError("TensorFlow is not installed; pip install tensorflow")
    module = _deferred_tensorflow(spec)
    sys.modules["tensorflow"] = module
    try:
        with native_stderr_captured():
            for name in RUNTIME_MODULES:
                importlib.import_module(name)
            # What tensorflow/__init__.py does, and before anything creates TensorFlow's eager
            # context: a context created in TF1 mode stays in graph mode underneath (tf.function
            # traces would then compare tensors with `==` by identity).
            sys.modules["tensorflow.python.compat.v2_compat"].enable_v2_behavior()
            # Device probing prints too (the cuInit failure on machines without a GPU).
            sys.modules["tensorflow.python.framework.config"].list_physical_devices()
    except BaseException:
        # Whatever got imported stays; a plain `import tensorflow` finishes the job.
        with _lock:
            if not _state["done"]:
                del sys.modules["tensorflow"]
        raise
    # From now on, importing a submodule not loaded yet goes through __getattr__("__path__").
    del module.__path__
    return module


def register_text_ops():
    """Registers tensorflow-text's TensorFlow ops, which SavedModels with its tokenizers use.

    Loads the package's op libraries directly: `import tensorflow_text` would also import all of
    TensorFlow's public API and Keras (through its Keras layers). Falls back to that import if
    the libraries are not where this tensorflow-text version keeps them.
    """
    import_tensorflow_quietly()
    if "tensorflow_text" in sys.modules:
        return
    spec = importlib.util.find_spec("tensorflow_text")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow-text is not installed; pip install tensorflow-text (exported models use its ops)")
    libraries = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "python", "ops", "_*.so")))
    if not libraries:
        import tensorflow_text  # noqa: F401

        return
    load_op_library = sys.modules["tensorflow.python.framework.load_library"].load_op_library
    for library in libraries:
        load_op_library(library)
