"""TF Serving's gRPC API: PredictionService.Predict / GetModelMetadata and ModelService.GetModelStatus,
with the messages and stubs of tensorflow-serving-api, so TF Serving's own client code works unchanged.
"""

import concurrent.futures

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from keraslm.serving.batching import QueueFullError
from keraslm.serving.models import NotFoundError
from keraslm.serving.servable import model_error_message
from keraslm.serving.tensors import RequestError, check_inputs, from_tensor_proto, to_tensor_proto


def _model_spec(request):
    """(name, version or None, label or None) of a request's ModelSpec."""
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def _abort(context, error):
    if isinstance(error, NotFoundError):
        context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    if isinstance(error, RequestError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    if isinstance(error, QueueFullError):
        context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
    status, message = model_error_message(error)
    context.abort(grpc.StatusCode.INVALID_ARGUMENT if status == 400 else grpc.StatusCode.INTERNAL, message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, metrics=None):
        self._manager = manager
        self._metrics = metrics

    def Predict(self, request, context):  # noqa: N802  (gRPC method name)
        name = request.model_spec.name
        try:
            response = self._predict(request, context)
        except BaseException:
            if self._metrics is not None:
                self._metrics.count(name if name in self._manager.names else "", "grpc_predict", "error")
            raise
        if self._metrics is not None:
            self._metrics.count(name, "grpc_predict", "ok")
        return response

    def _predict(self, request, context):
        name, version, label = _model_spec(request)
        try:
            servable = self._manager.acquire(name, version, label)
        except NotFoundError as error:
            _abort(context, error)
        try:
            signature_name, specs = servable.signature(request.model_spec.signature_name)
            inputs = {}
            for key, proto in request.inputs.items():
                if key not in specs:
                    raise RequestError(f"unknown input {key!r}; this signature's inputs are {', '.join(sorted(specs))}")
                inputs[key] = from_tensor_proto(proto, key, specs[key])
            rows = check_inputs(inputs, specs)
            if servable.batching and rows is not None:
                outputs = servable.submit(signature_name, inputs, rows).result()
            else:
                outputs = servable.call(signature_name, inputs)
            wanted = list(request.output_filter) or sorted(outputs)
            unknown = [key for key in wanted if key not in outputs]
            if unknown:
                raise RequestError(f"output_filter names {unknown[0]!r}, which this signature does not output")
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature_name
            for key in wanted:
                response.outputs[key].CopyFrom(to_tensor_proto(outputs[key]))
            return response
        except Exception as error:  # noqa: BLE001  Each error becomes its gRPC status.
            _abort(context, error)
        finally:
            servable.release()

    def _unimplemented(self, request, context):
        del request
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "keraslm-serve answers Predict and GetModelMetadata; Classify, Regress and MultiInference take "
            "tf.Example protos, which keraslm exports do not: call Predict with the signature instead",
        )

    Classify = Regress = MultiInference = _unimplemented  # noqa: N815

    def GetModelMetadata(self, request, context):  # noqa: N802
        name, version, label = _model_spec(request)
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, 'metadata_field must be ["signature_def"]')
        try:
            servable = self._manager.acquire(name, version, label)
        except NotFoundError as error:
            _abort(context, error)
        try:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(servable.signature_def_map())
            return response
        finally:
            servable.release()


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager):
        self._manager = manager

    def GetModelStatus(self, request, context):  # noqa: N802
        name, version, label = _model_spec(request)
        try:
            states = self._manager.status(name, version, label)
        except NotFoundError as error:
            _abort(context, error)
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state, message in states:
            status = response.model_version_status.add(version=number)
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
            status.status.error_code = 0 if not message else 2  # OK / UNKNOWN (tensorflow.error.Code)
            status.status.error_message = message
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        del request
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "keraslm-serve takes no config over gRPC: edit the --model_config_file and start it with "
            "--model_config_file_poll_wait_seconds, which re-reads it",
        )


def bind_grpc_server(manager, host, port, max_message_bytes, metrics=None):
    """A grpc.Server bound to host:port, not started yet (start() once the models are loaded);
    returns (server, the bound port)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        # gRPC sets SO_REUSEPORT by default: a second server on the same port then started
        # without a word and took a share of the connections. One server per port, as for REST.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="grpc"), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    try:
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(
            f"--port={port}: cannot listen on {host}:{port} (in use, or --rest_api_host is not an address of this "
            "machine); pick another --port, or --port=0 for no gRPC"
        )
    return server, bound
