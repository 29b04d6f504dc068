"""Request values to numpy arrays and back, checked against a signature's inputs.

REST follows TF Serving's JSON format (tensorflow_serving/g3doc/api_rest.md): row format
(`instances`, one entry per row, an object of named inputs or a bare value when the signature
has one input) answered with `predictions`, columnar format (`inputs`, a value or an object of
named values) answered with `outputs`; strings as JSON strings or {"b64": ...}. gRPC carries
TensorProtos. Every problem is a RequestError naming the input and what was expected.
"""

import base64
import math

import numpy as np

# pylint: disable=wrong-import-position
from keraslm.tf_import import import_tensorflow_quietly

import_tensorflow_quietly()
from tensorflow.core.framework import types_pb2  # noqa: E402
from tensorflow.python.framework import dtypes, tensor_util  # noqa: E402


class RequestError(ValueError):
    """A request the client must fix (HTTP 400, gRPC INVALID_ARGUMENT)."""


def input_specs(signature_def):
    """{input name: (numpy dtype or None for strings, dtype name, shape with None for unknown dims)}."""
    specs = {}
    for name, info in signature_def.inputs.items():
        dtype = dtypes.as_dtype(info.dtype)
        shape = None if info.tensor_shape.unknown_rank else [None if dim.size < 0 else dim.size for dim in info.tensor_shape.dim]
        specs[name] = (None if info.dtype == types_pb2.DT_STRING else dtype.as_numpy_dtype, dtype.name, shape)
    return specs


def _decode_strings(value, name):
    if isinstance(value, list):
        return [_decode_strings(item, name) for item in value]
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as error:
            # JSON's \ud800-style escapes can name half of a surrogate pair, which is no character.
            raise RequestError(
                f"input {name!r} holds {value[error.start]!r} at character {error.start}, half of a surrogate pair, "
                "which is not text; send valid Unicode (or bytes as {\"b64\": ...})"
            ) from None
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise RequestError(f"input {name!r}: {{\"b64\": ...}} is not valid base64") from None
    raise RequestError(f"input {name!r} takes strings, got {_kind(value)}")


def _kind(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"{value!r}"


def _check_numbers(value, name, dtype_name, integer):
    if isinstance(value, list):
        for item in value:
            _check_numbers(item, name, dtype_name, integer)
        return
    if isinstance(value, bool) and dtype_name != "bool":
        raise RequestError(f"input {name!r} takes {dtype_name}, got a boolean")
    if not isinstance(value, (int, float)) and not (dtype_name == "bool" and isinstance(value, bool)):
        raise RequestError(f"input {name!r} takes {dtype_name}, got {_kind(value)}")
    if integer and isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise RequestError(f"input {name!r} takes {dtype_name}, got the number {value}")
    if integer:
        limits = np.iinfo(dtype_name)
        if not limits.min <= value <= limits.max:
            raise RequestError(f"input {name!r} holds {value}, beyond {dtype_name}'s range ({limits.min} to {limits.max})")


def to_array(value, name, spec):
    """A JSON value (nested lists) as the input's numpy array; RequestError if it cannot be."""
    numpy_dtype, dtype_name, _ = spec
    if numpy_dtype is None:
        strings = _decode_strings(value, name)
        try:
            array = np.array(strings, dtype=object)
        except ValueError:
            array = None
        # numpy keeps the lists of a ragged nesting as objects rather than failing.
        if array is None or any(not isinstance(item, bytes) for item in array.flat):
            raise RequestError(f"input {name!r} is ragged: every row must have the same shape")
    else:
        _check_numbers(value, name, dtype_name, np.issubdtype(numpy_dtype, np.integer))
        try:
            wide = np.array(value, dtype=np.float64 if np.issubdtype(numpy_dtype, np.floating) else None)
            if wide.dtype == object:
                raise ValueError("ragged")
            if np.issubdtype(numpy_dtype, np.floating):
                limit = np.finfo(numpy_dtype).max
                if np.any(np.isfinite(wide) & (np.abs(wide) > limit)):
                    raise RequestError(f"input {name!r} holds a number beyond {dtype_name}'s range (±{float(limit):.4g})")
            array = np.array(value, dtype=numpy_dtype)
        except (ValueError, OverflowError) as error:
            if isinstance(error, RequestError):
                raise
            if "ragged" in str(error) or "inhomogeneous" in str(error) or "sequence" in str(error):
                raise RequestError(f"input {name!r} is ragged: every row must have the same shape") from None
            raise RequestError(f"input {name!r} cannot be {dtype_name}: {error}") from None
    return array


def check_inputs(arrays, specs):
    """Checks names, ranks and known dimensions; the common batch size (rows) or None."""
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise RequestError(f"unknown input {unknown[0]!r}; this signature's inputs are {', '.join(sorted(specs))}")
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise RequestError(f"missing input {missing[0]!r}; this signature needs {', '.join(sorted(specs))}")
    rows = set()
    for name, array in arrays.items():
        _, dtype_name, shape = specs[name]
        if shape is None:
            continue
        if array.ndim != len(shape) or any(want is not None and want != got for want, got in zip(shape, array.shape)):
            want = "[" + ", ".join("-1" if dim is None else str(dim) for dim in shape) + "]"
            raise RequestError(f"input {name!r} has shape {list(array.shape)}; the signature takes {dtype_name} of shape {want}")
        if shape:
            rows.add(array.shape[0])
    if len(rows) > 1:
        raise RequestError(f"the inputs have different numbers of rows ({', '.join(map(str, sorted(rows)))})")
    if rows and 0 in rows:
        raise RequestError("the request has no rows; send at least one instance")
    return rows.pop() if rows else None


def parse_predict_body(body, specs):
    """(inputs as numpy arrays, "row" or "columnar") from a parsed :predict JSON body."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object with \"instances\" or \"inputs\"")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("the request must have exactly one of \"instances\" (row format) and \"inputs\" (columnar format)")
    known = {"instances", "inputs", "signature_name"}
    if set(body) - known:
        raise RequestError(f"unknown field {sorted(set(body) - known)[0]!r} in the request; known: {', '.join(sorted(known))}")
    names = sorted(specs)
    if "inputs" in body:
        inputs = body["inputs"]
        if not (isinstance(inputs, dict) and not _is_b64(inputs)):
            if len(names) != 1:
                raise RequestError(f"\"inputs\" must be an object naming each input ({', '.join(names)})")
            inputs = {names[0]: inputs}
        values = inputs
        layout = "columnar"
    else:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise RequestError("\"instances\" must be a list with one entry per row")
        if not instances:
            raise RequestError("\"instances\" is empty; send at least one instance")
        named = [isinstance(item, dict) and not _is_b64(item) for item in instances]
        if all(named):
            keys = set(instances[0])
            for index, item in enumerate(instances):
                if set(item) != keys:
                    raise RequestError(
                        f"instance {index} names {', '.join(sorted(item)) or 'no input'} but instance 0 names "
                        f"{', '.join(sorted(keys)) or 'no input'}; every instance must name the same inputs"
                    )
            values = {key: [item[key] for item in instances] for key in keys}
        elif not any(named) and len(names) == 1:
            values = {names[0]: instances}
        else:
            raise RequestError(
                f"each instance must be an object naming the inputs ({', '.join(names)})"
                + ("" if len(names) > 1 else ", or a bare value for the one input")
            )
        layout = "row"
    arrays = {}
    for name, value in values.items():
        if name not in specs:
            raise RequestError(f"unknown input {name!r}; this signature's inputs are {', '.join(names)}")
        arrays[name] = to_array(value, name, specs[name])
    return arrays, layout


def _is_b64(value):
    return isinstance(value, dict) and set(value) == {"b64"}


def _json_value(array):
    if array.dtype == object or array.dtype.kind == "S":
        return _strings_to_json(array.tolist())
    if array.dtype.kind == "f":
        return array.astype(np.float64).tolist()
    return array.tolist()


def _strings_to_json(value):
    if isinstance(value, list):
        return [_strings_to_json(item) for item in value]
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def predict_response(outputs, layout):
    """The JSON response for outputs {name: array}, in the request's layout."""
    names = sorted(outputs)
    if layout == "columnar":
        if len(names) == 1:
            return {"outputs": _json_value(outputs[names[0]])}
        return {"outputs": {name: _json_value(outputs[name]) for name in names}}
    columns = {name: _json_value(outputs[name]) for name in names}
    rows = {len(column) if isinstance(column, list) else -1 for column in columns.values()}
    if len(rows) != 1 or -1 in rows:
        raise RequestError("the outputs do not share a batch dimension; use the columnar format (\"inputs\")")
    count = rows.pop()
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{name: columns[name][index] for name in names} for index in range(count)]}


def from_tensor_proto(proto, name, spec):
    """A gRPC TensorProto as the input's numpy array."""
    _, dtype_name, _ = spec
    want = dtypes.as_dtype(dtype_name)
    if proto.dtype != want.as_datatype_enum:
        got = dtypes.as_dtype(proto.dtype).name if proto.dtype else "no dtype"
        raise RequestError(f"input {name!r} takes {dtype_name}, got {got}")
    if proto.tensor_shape.unknown_rank:
        raise RequestError(f"input {name!r} has no shape")
    elements = 1
    for dim in proto.tensor_shape.dim:
        if dim.size < 0:
            raise RequestError(f"input {name!r} has a negative dimension ({dim.size})")
        elements *= dim.size
    # TensorProto lets a shape repeat the last value given; a 60-byte request could then ask for
    # millions of rows. Here every element must be sent.
    if proto.tensor_content:
        given = len(proto.tensor_content) // max(want.size, 1)
    else:
        fields = [field for field, _ in proto.ListFields() if field.name.endswith("_val")]
        given = len(getattr(proto, fields[0].name)) if fields else 0
        if want == dtypes.string:
            given = len(proto.string_val)
    if given != elements:
        raise RequestError(
            f"input {name!r} has shape {[dim.size for dim in proto.tensor_shape.dim]} ({elements} values) but carries "
            f"{given}; send every value"
        )
    try:
        return tensor_util.MakeNdarray(proto)
    except (TypeError, ValueError) as error:
        raise RequestError(f"input {name!r} is not a valid TensorProto: {error}") from None


# The typed repeated field of a TensorProto for each dtype, as TF Serving fills them (its
# AsProtoField; tensor_content only with --use_tensor_content).
_PROTO_FIELDS = {
    "float32": "float_val", "float64": "double_val", "int32": "int_val", "int16": "int_val", "int8": "int_val",
    "uint8": "int_val", "int64": "int64_val", "bool": "bool_val",
}


def to_tensor_proto(array):
    """A TensorProto of an output, its values in the typed field (float_val, int_val, string_val...)."""
    proto = tensor_util.make_tensor_proto(array)
    field = _PROTO_FIELDS.get(np.asarray(array).dtype.name)
    if field and proto.tensor_content:
        proto.ClearField("tensor_content")
        getattr(proto, field).extend(np.asarray(array).ravel().tolist())
    return proto
