"""A SavedModel's graph in a TF1-style Session, the way TF Serving runs it.

`tf.saved_model.load` rebuilds every function of a SavedModel as a Python graph before the first
call (seconds for a small model); here the graph is imported without its functions, and each
function is imported when first called (BENCHMARKS.md, "Start-up"). Needs TensorFlow's runtime
only (keraslm.tf_import), not its public API or Keras.
"""

import os
import threading

from keraslm.tf_import import import_tensorflow_quietly, native_stderr_captured

import_tensorflow_quietly()

# pylint: disable=wrong-import-position
from google.protobuf.message import DecodeError  # noqa: E402  (protobuf comes with TensorFlow)
from tensorflow.core.framework import graph_pb2  # noqa: E402
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2, saved_model_pb2  # noqa: E402
from tensorflow.python.client import session as tf_session  # noqa: E402
from tensorflow.python.framework import dtypes, errors, importer, ops  # noqa: E402
from tensorflow.python.ops import array_ops, gen_functional_ops, gen_resource_variable_ops  # noqa: E402


def _call_config():
    """Graph optimization for the SavedModel's functions, chosen for the first call's set-up.

    Grappler's passes run once per function, at its first call, and took most of that call's
    set-up. Left out here: constant folding, layout, memory and dependency optimization, the debug
    stripper, the MLIR (TFG) pass and the meta optimizer's second round. On the demo model that
    set-up took 1.6 s best / 2.3 s median against 3.4 / 4.3 s with all of TensorFlow's default
    passes, and 200 tokens decoded in 0.44 / 0.54 s against 0.40 / 0.47 s; grappler off
    altogether set up in 1.3 / 1.6 s but decoded in 0.68 / 0.69 s (BENCHMARKS.md, "Start-up",
    bench/startup.py --compare_rewrites; one run on a shared 2-core machine).
    """
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    for name in ("constant_folding", "layout_optimizer", "dependency_optimization", "debug_stripper"):
        setattr(rewrite, name, rewriter_config_pb2.RewriterConfig.OFF)
    rewrite.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
    rewrite.disable_tfg_optimizer = True
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    return config


def _function_references(node_defs):
    names = set()
    for node in node_defs:
        for value in node.attr.values():
            if value.func.name:
                names.add(value.func.name)
            names.update(function.name for function in value.list.func)
    return names


class SavedModelSession:
    """A SavedModel's graph in a TF1-style Session: how TF Serving runs it.

    Loading imports the graph's variables, tables and initializers (not its functions), restores
    the checkpoint and runs the asset initializers (the vocabulary tables). Functions are
    imported on first call: the signatures, and the functions the root object keeps for the
    Python API (tokenize, detokenize, ..., the decoding-loop variants), which only
    tf.saved_model.load would otherwise reach. A function is called with the variables, tables
    and constants it captured, found by their SavedObjectGraph ids through the signatures, which
    capture all of them.
    """

    def __init__(self, path):
        saved_model = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as file:
            try:
                saved_model.ParseFromString(file.read())
            except DecodeError as error:
                raise ValueError(f"saved_model.pb cannot be parsed: {error}") from None
        meta_graphs = [graph for graph in saved_model.meta_graphs if "serve" in graph.meta_info_def.tags]
        if not meta_graphs:
            raise ValueError("saved_model.pb has no MetaGraph tagged 'serve'")
        meta_graph = meta_graphs[0]
        self.signature_defs = {
            name: signature for name, signature in meta_graph.signature_def.items() if not name.startswith("__")
        }
        self.asset_files = [asset.filename for asset in meta_graph.asset_file_def]
        self._library = {function.signature.name: function for function in meta_graph.graph_def.library.function}
        self._objects = meta_graph.object_graph_def
        self._versions = meta_graph.graph_def.versions
        self._config = _call_config().SerializeToString()
        graph_nodes = {node.name: node for node in meta_graph.graph_def.node}
        self._signature_calls = {}  # signature name -> its call node in saved_model.pb
        self._captures = {}  # SavedObjectGraph node id -> the graph tensor that holds it
        for name, signature in self.signature_defs.items():
            call = graph_nodes[next(iter(signature.outputs.values())).name.split(":")[0]]
            self._signature_calls[name] = call
            bound_inputs = self._objects.concrete_functions[call.attr["f"].func.name].bound_inputs
            explicit = len(call.input) - len(bound_inputs)
            for node_id, tensor in zip(bound_inputs, call.input[explicit:]):
                self._captures[node_id] = tensor if ":" in tensor else tensor + ":0"
        calls = {call.name for call in self._signature_calls.values()}
        nodes = [node for node in meta_graph.graph_def.node if node.name not in calls]
        self._graph = ops.Graph()
        self._imported = set()
        self._import_functions(_function_references(nodes), nodes)
        session_config = config_pb2.ConfigProto()
        # The top-level graph is only placeholders and calls; each call optimizes its function.
        session_config.graph_options.rewrite_options.disable_meta_optimizer = True
        session_config.graph_options.optimizer_options.opt_level = config_pb2.OptimizerOptions.L0
        self._session = tf_session.Session(graph=self._graph, config=session_config)
        saver = meta_graph.saver_def
        try:
            self._session.run(saver.restore_op_name, {saver.filename_tensor_name: os.path.join(path, "variables", "variables")})
        except errors.OpError as error:
            raise ValueError(f"the weights in variables/ cannot be read: {error.message}") from None
        for name in self.asset_files:
            # Some are read by the initializers below, others never (the sentencepiece model also
            # travels inside the graph); either way the export is not what keraslm-export wrote.
            if not os.path.isfile(os.path.join(path, "assets", name)):
                raise ValueError(f"assets/{name} is missing")
        init = meta_graph.signature_def.get("__saved_model_init_op")
        if init is not None:
            assets = {
                asset.tensor_info.name: os.path.join(path, "assets", asset.filename) for asset in meta_graph.asset_file_def
            }
            self._session.run(init.outputs["__saved_model_init_op"].name, assets)
        # The resources the functions capture are created now rather than in a first call: the
        # sentencepiece model's loader logs "normalizer.cc(51) LOG(INFO) ..." to descriptor 2.
        with native_stderr_captured():
            self._session.run([self._graph.get_tensor_by_name(name).op for name in set(self._captures.values())])
        with self._graph.as_default():
            handles = [op.outputs[0] for op in self._graph.get_operations() if op.type == "VarHandleOp"]
            initialized = [gen_resource_variable_ops.var_is_initialized_op(handle) for handle in handles]
        # False for exports whose functions read variables the checkpoint does not restore
        # (keraslm before it tracked Keras 3's inner tf.Variables); tf.saved_model.load runs them.
        self.usable = all(self._session.run(initialized)) if initialized else True
        self._callables = {}
        self._lock = threading.Lock()

    def _import_functions(self, names, nodes=()):
        """Adds the named functions, the functions they call and `nodes` to the graph."""
        pending, needed = list(names), []
        while pending:
            name = pending.pop()
            if name in self._imported:
                continue
            if name not in self._library:
                raise ValueError(f"saved_model.pb lacks the function {name}")
            self._imported.add(name)
            function = self._library[name]
            for node in function.node_def:
                if node.op in ("StatefulPartitionedCall", "PartitionedCall"):
                    node.attr["config_proto"].s = self._config
            needed.append(function)
            pending.extend(_function_references(function.node_def))
        graph_def = graph_pb2.GraphDef(versions=self._versions, node=list(nodes))
        graph_def.library.function.extend(needed)
        with self._graph.as_default():
            importer.import_graph_def(graph_def, name="")

    def _make_call(self, function_name, captures):
        """callable(*explicit inputs) -> list of outputs, for a function of the library."""
        function = self._library.get(function_name)
        if function is None:
            raise ValueError(f"saved_model.pb lacks the function {function_name}")
        self._import_functions([function_name])
        explicit = function.signature.input_arg[: len(function.signature.input_arg) - len(captures)]
        with self._graph.as_default():
            feeds = [array_ops.placeholder(dtypes.as_dtype(arg.type)) for arg in explicit]
            outputs = gen_functional_ops.stateful_partitioned_call(
                args=feeds + [self._graph.get_tensor_by_name(name) for name in captures],
                Tout=[dtypes.as_dtype(arg.type) for arg in function.signature.output_arg],
                f=function_name,
                config_proto=self._config,
            )
        return self._session.make_callable(list(outputs), feeds), [arg.name for arg in explicit]

    def signature(self, name):
        """callable(**inputs) -> {output name: array} for a signature."""
        with self._lock:
            if ("signature", name) not in self._callables:
                signature, call = self.signature_defs[name], self._signature_calls[name]
                bound_inputs = self._objects.concrete_functions[call.attr["f"].func.name].bound_inputs
                explicit = call.input[: len(call.input) - len(bound_inputs)]
                captures = [tensor if ":" in tensor else tensor + ":0" for tensor in call.input[len(explicit) :]]
                function, _ = self._make_call(call.attr["f"].func.name, captures)
                position = {tensor: index for index, tensor in enumerate(explicit)}
                inputs = sorted(signature.inputs, key=lambda key: position[signature.inputs[key].name.split(":")[0]])
                outputs = {key: int(info.name.split(":")[1]) for key, info in signature.outputs.items()}

                def call_signature(**values):
                    results = function(*[values[key] for key in inputs])
                    return {key: results[index] for key, index in outputs.items()}

                self._callables[("signature", name)] = call_signature
            return self._callables[("signature", name)]

    def function(self, attribute):
        """A function the root object keeps (tokenize, generate_plain, ...), or None.

        callable(*inputs, **inputs by name) -> {output name: array} for functions that return a
        dict, else the one array.
        """
        with self._lock:
            if ("function", attribute) not in self._callables:
                self._callables[("function", attribute)] = self._root_function(attribute)
            return self._callables[("function", attribute)]

    def _root_function(self, attribute):
        children = {child.local_name: child.node_id for child in self._objects.nodes[0].children}
        if attribute not in children:
            return None
        saved = self._objects.nodes[children[attribute]]
        if saved.WhichOneof("kind") != "function" or len(saved.function.concrete_functions) != 1:
            return None
        name = saved.function.concrete_functions[0]
        bound_inputs = self._objects.concrete_functions[name].bound_inputs
        if not all(node_id in self._captures for node_id in bound_inputs):
            return None  # It captures something no signature does: not reachable this way.
        function, names = self._make_call(name, [self._captures[node_id] for node_id in bound_inputs])
        structure = self._objects.concrete_functions[name].output_signature
        # Dict outputs come out flattened in sorted key order (tf.nest).
        keys = sorted(structure.dict_value.fields) if structure.WhichOneof("kind") == "dict_value" else None

        def call_function(*args, **named):
            results = function(*args, *[named[name] for name in names[len(args) :]])
            return dict(zip(keys, results)) if keys is not None else results[0]

        return call_function

    def close(self):
        self._session.close()
