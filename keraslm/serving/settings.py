"""What keraslm-serve serves and how it batches, read from TF Serving's own file formats.

--model_config_file is a text-format ModelServerConfig, parsed with the protos that
tensorflow-serving-api ships. --batching_parameters_file is a text-format BatchingParameters;
tensorflow-serving-api does not ship that proto (it lives in TF Serving's servables/ tree), so
its descriptor is declared here with TF Serving's field names, numbers and wrapper types
(tensorflow_serving/servables/tensorflow/session_bundle_config.proto), and protobuf's own text
parser reads the file: the same file works with tensorflow_model_server.
"""

import dataclasses
import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from keraslm.errors import InputNotFoundError, InvalidInputError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One served model: its name, base path, which versions to serve, and version labels."""

    name: str
    base_path: str
    policy: str = "latest"  # "latest", "all" or "specific"
    num_versions: int = 1  # for "latest"
    versions: tuple = ()  # for "specific"
    labels: tuple = ()  # ((label, version), ...)


MAX_BATCH_TIMEOUT_MICROS = 10_000_000


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's batching parameters; the defaults are TF Serving's own (BasicBatchScheduler)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)

    def validate(self, where="--batching_parameters_file"):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{where}: {name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.batch_timeout_micros <= MAX_BATCH_TIMEOUT_MICROS:
            raise InvalidInputError(
                f"{where}: batch_timeout_micros must be between 0 and {MAX_BATCH_TIMEOUT_MICROS} (10 s), "
                f"got {self.batch_timeout_micros}; it is how long a lone request waits for company"
            )
        for name, limit in (("max_batch_size", 1_000_000), ("max_enqueued_batches", 1_000_000), ("num_batch_threads", 1024)):
            if getattr(self, name) > limit:
                raise InvalidInputError(f"{where}: {name} must be at most {limit}, got {getattr(self, name)}")


def _read(path, flag):
    if not os.path.isfile(path):
        raise InputNotFoundError(f"{flag}={path}: no such file")
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{flag}={path} is not UTF-8 text: {error}") from None


def _parse(text, message, path, flag):
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        # protobuf's message starts with "line:column : ".
        raise InvalidInputError(f"{flag}={path}:{error}; see docs/serving.md for the format") from None
    return message


def model_from_flags(model_name, model_base_path):
    """The one model of --model_name/--model_base_path."""
    if not model_name:
        raise InvalidInputError("--model_name is empty; name the model that clients will ask for")
    if "/" in model_name or ":" in model_name or model_name in (".", ".."):
        raise InvalidInputError(f"--model_name={model_name} cannot appear in a URL (/v1/models/NAME:predict); use a name without '/' and ':'")
    return [_checked(ModelSpec(name=model_name, base_path=os.path.abspath(model_base_path)), "--model_base_path")]


def read_model_config_file(path):
    """[ModelSpec] from a text-format ModelServerConfig (model_config_list)."""
    flag = "--model_config_file"
    config = _parse(_read(path, flag), model_server_config_pb2.ModelServerConfig(), path, flag)
    if config.WhichOneof("config") != "model_config_list" or not config.model_config_list.config:
        raise InvalidInputError(f"{flag}={path} has no model_config_list with a config entry; see docs/serving.md")
    specs, names = [], set()
    base_dir = os.path.dirname(os.path.abspath(path))
    for entry in config.model_config_list.config:
        where = f"{flag}={path}, model {entry.name!r}"
        if not entry.name:
            raise InvalidInputError(f"{flag}={path}: a config entry has no name")
        if "/" in entry.name or ":" in entry.name or entry.name in (".", ".."):
            raise InvalidInputError(
                f"{flag}={path}: the model name {entry.name!r} cannot appear in a URL (/v1/models/NAME:predict); "
                "use a name without '/' and ':'"
            )
        if entry.name in names:
            raise InvalidInputError(f"{flag}={path}: the model name {entry.name!r} appears twice")
        names.add(entry.name)
        if entry.model_platform not in ("", "tensorflow"):
            raise InvalidInputError(f"{where}: model_platform {entry.model_platform!r} is not served; use \"tensorflow\"")
        if not entry.base_path:
            raise InvalidInputError(f"{where} has no base_path")
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        spec = ModelSpec(
            name=entry.name,
            # Relative base paths are taken from the config file's directory.
            base_path=os.path.join(base_dir, entry.base_path),
            policy=policy,
            num_versions=max(1, entry.model_version_policy.latest.num_versions) if policy == "latest" else 1,
            versions=tuple(sorted(entry.model_version_policy.specific.versions)),
            labels=tuple(sorted(entry.version_labels.items())),
        )
        if policy == "specific" and not spec.versions:
            raise InvalidInputError(f"{where}: model_version_policy specific lists no versions")
        specs.append(_checked(spec, where + " base_path"))
    return specs


def _checked(spec, where):
    if not os.path.isdir(spec.base_path):
        raise InputNotFoundError(
            f"{where}={spec.base_path}: no such directory; pass the --export_dir of keraslm-train or keraslm-export"
        )
    if os.path.isfile(os.path.join(spec.base_path, "saved_model.pb")):
        raise InvalidInputError(
            f"{where}={spec.base_path} is a version directory; pass its parent (the base path holds numbered versions)"
        )
    # Labels are checked against the versions loaded (ModelManager.check_labels), as TF Serving does.
    return spec


def _batching_message_class():
    """The BatchingParameters message class, declared as in TF Serving's session_bundle_config.proto."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    file = descriptor_pb2.FileDescriptorProto(
        name="keraslm/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name, type_name in (
        (1, "max_batch_size", ".google.protobuf.Int64Value"),
        (2, "batch_timeout_micros", ".google.protobuf.Int64Value"),
        (3, "max_enqueued_batches", ".google.protobuf.Int64Value"),
        (4, "num_batch_threads", ".google.protobuf.Int64Value"),
        (5, "thread_pool_name", ".google.protobuf.StringValue"),
    ):
        message.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL, type_name=type_name)
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def read_batching_parameters(path):
    """BatchingOptions from a --batching_parameters_file; TF Serving's defaults without one."""
    if not path:
        return BatchingOptions()
    flag = "--batching_parameters_file"
    parameters = _parse(_read(path, flag), _batching_message_class()(), path, flag)
    for field in ("pad_variable_length_inputs", "allowed_batch_sizes"):
        if getattr(parameters, field):
            raise InvalidInputError(
                f"{flag}={path}: {field} is not supported by keraslm-serve (keraslm's signatures take any batch size); "
                "remove it"
            )
    values = {
        name: getattr(parameters, name).value
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
        if parameters.HasField(name)
    }
    options = BatchingOptions(**values)
    options.validate(f"{flag}={path}")
    return options
