"""TF Serving's REST API (tensorflow_serving/g3doc/api_rest.md) as a Starlette app.

  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             version status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    signature_def map
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     instances -> predictions, inputs -> outputs
  GET  /monitoring/prometheus/metrics                             request counts and batch sizes
  GET  /  and  GET /keraslm/models                                the playground page and its model list

Errors are {"error": "..."}: 400 for a request to fix, 404 for an unknown model, version or label,
413 for a body over --max_request_bytes, 503 when the batch queue is full.
"""

import asyncio
import importlib.resources
import json
import re

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from keraslm.serving.batching import QueueFullError
from keraslm.serving.metrics import metrics_text
from keraslm.serving.models import NotFoundError
from keraslm.serving.servable import model_error_message
from keraslm.serving.tensors import RequestError, check_inputs, parse_predict_body, predict_response

# TF Serving's URL grammar: a name without '/' or ':', then an optional version or label.
_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:[A-Za-z]+)?$"
)


class _HTTPError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _error(status, message):
    return JSONResponse({"error": message}, status_code=status)


def _parse_version(text):
    if text is None:
        return None
    if not text.isdigit():
        raise _HTTPError(400, f"version {text!r} is not a version number (0 or more)")
    return int(text)


async def _read_body(request, limit):
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _HTTPError(413, f"the request body has {int(length)} bytes, over --max_request_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _HTTPError(413, f"the request body is over --max_request_bytes={limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _HTTPError(400, f"the request body is not UTF-8 (byte {error.start})") from None
    if not text.strip():
        raise _HTTPError(400, "the request body is empty; send a JSON object")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _HTTPError(400, f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise _HTTPError(400, "malformed JSON: nested too deeply") from None


def create_app(manager, metrics, max_request_bytes, playground=True, timeout_seconds=None):
    """The Starlette app over a ModelManager; `metrics` is a metrics.Metrics shared with gRPC."""

    def status_json(name, version, label):
        states = manager.status(name, version, label)
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": state,
                    "status": {"error_code": "OK" if not message else "UNKNOWN", "error_message": message},
                }
                for v, state, message in states
            ]
        }

    def metadata_json(name, version, label):
        servable = manager.acquire(name, version, label)
        try:
            signatures = json_format.MessageToDict(servable.signature_def_map(), preserving_proto_field_name=True)
            return {
                "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": signatures},
            }
        finally:
            servable.release()

    async def predict(request, name, version, label):
        body = _parse_json(await _read_body(request, max_request_bytes))
        signature_name = body.get("signature_name") if isinstance(body, dict) else None
        if not isinstance(signature_name, (str, type(None))):
            raise RequestError("\"signature_name\" must be a string")
        servable = manager.acquire(name, version, label)
        try:
            signature_name, specs = servable.signature(signature_name)
            inputs, layout = parse_predict_body(body, specs)
            rows = check_inputs(inputs, specs)
            if servable.batching and rows is not None:
                pending = asyncio.wrap_future(servable.submit(signature_name, inputs, rows))
            else:
                pending = asyncio.to_thread(servable.call, signature_name, inputs)
            try:
                result = await asyncio.wait_for(pending, timeout_seconds)
            except asyncio.TimeoutError:
                raise _HTTPError(
                    504, f"the request took over --rest_api_timeout_in_ms={round(timeout_seconds * 1000)}; "
                    "send fewer rows or tokens, or raise the flag"
                ) from None
            return predict_response(result, layout)
        finally:
            servable.release()

    async def models_route(request):
        path = request.url.path
        match = _MODEL_PATH.match(path)
        name = match.group("name") if match else None
        label_name = name if name in manager.names else ""  # metrics: junk names share one label
        api = "unknown"
        try:
            if match is None:
                raise _HTTPError(404, f"no such endpoint: {request.method} {path} (see docs/serving.md)")
            version = _parse_version(match.group("version"))
            label = match.group("label")
            tail = match.group("tail") or ""
            if tail == ":predict":
                api = "predict"
                if request.method != "POST":
                    raise _HTTPError(405, f"{path} takes POST")
                response = await predict(request, name, version, label)
            elif tail in (":classify", ":regress"):
                raise _HTTPError(
                    400, f"{tail[1:]} takes tf.Example protos, which keraslm exports do not; use :predict with the signature"
                )
            elif tail.startswith(":"):
                raise _HTTPError(404, f"unknown method {tail}; use :predict")
            elif request.method != "GET":
                raise _HTTPError(405, f"{path} takes GET")
            elif tail == "/metadata":
                api = "metadata"
                response = metadata_json(name, version, label)
            else:
                api = "status"
                response = status_json(name, version, label)
        except _HTTPError as error:
            metrics.count(label_name, api, error.status)
            return _error(error.status, str(error))
        except RequestError as error:
            metrics.count(label_name, api, 400)
            return _error(400, str(error))
        except NotFoundError as error:
            metrics.count(label_name, api, 404)
            return _error(404, str(error))
        except QueueFullError as error:
            metrics.count(label_name, api, 503)
            return _error(503, str(error))
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as error:  # noqa: BLE001  TF errors from the model run, with their message.
            status, message = model_error_message(error)
            metrics.count(label_name, api, status)
            return _error(status, message)
        metrics.count(label_name, api, 200)
        return JSONResponse(response)

    async def metrics_route(request):
        del request
        return Response(metrics_text(metrics, manager.batch_sizes), media_type="text/plain; version=0.0.4")

    async def listing_route(request):
        del request
        return JSONResponse({"models": manager.listing()})

    page = importlib.resources.files("keraslm.serving").joinpath("playground.html").read_text(encoding="utf-8") if playground else ""

    async def playground_route(request):
        del request
        return HTMLResponse(page)

    async def not_found(request, exc):
        del exc
        hint = "; name a model: /v1/models/{name}" if request.url.path.rstrip("/") == "/v1/models" else ""
        return _error(404, f"no such endpoint: {request.method} {request.url.path}{hint} (see docs/serving.md)")

    async def method_not_allowed(request, exc):
        del exc
        return _error(405, f"{request.url.path} does not take {request.method}")

    routes = [
        Route("/v1/models/{rest:path}", models_route, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/monitoring/prometheus/metrics", metrics_route),
    ]
    if playground:
        routes += [Route("/", playground_route), Route("/keraslm/models", listing_route)]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    # /v1/models (no name) answers 404 with the hint, not a redirect to /v1/models/.
    app.router.redirect_slashes = False
    app.state.metrics = metrics
    return app
