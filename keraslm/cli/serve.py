"""keraslm-serve: serve exported models over TensorFlow Serving's REST and gRPC APIs.

  keraslm-serve --model_name=shakespeare --model_base_path=saved_models/shakespeare
  keraslm-serve --model_config_file=models.config --enable_batching --batching_parameters_file=batching.config

The flags are tensorflow_model_server's; a client written for TF Serving works against it
unchanged, and the same saved_models/ directory works under the real binary (docs/serving.md).
"""

from absl import flags

from keraslm.cli.common import run_main

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_integer("port", 8500, "Port for the gRPC API (PredictionService, ModelService); 0 = no gRPC.")
    flags.DEFINE_integer("rest_api_port", 8501, "Port for the REST API and the playground page; 0 = no REST (gRPC only).")
    flags.DEFINE_string(
        "rest_api_host", "127.0.0.1", "Address both APIs listen on; 0.0.0.0 exposes them to the network (no authentication)."
    )
    flags.DEFINE_string("model_name", "", "Name clients use for the one model of --model_base_path.")
    flags.DEFINE_string(
        "model_base_path", "", "Directory of numbered SavedModel versions (keraslm-export's --export_dir); the newest is served."
    )
    flags.DEFINE_string(
        "model_config_file", "", "TF Serving's text-proto model_config_list, for several models (instead of --model_name/--model_base_path)."
    )
    flags.DEFINE_bool("enable_batching", False, "Merge concurrent requests to a signature into one batch.")
    flags.DEFINE_string(
        "batching_parameters_file", "",
        "TF Serving's text-proto batching parameters (max_batch_size, batch_timeout_micros, max_enqueued_batches, "
        "num_batch_threads); TF Serving's defaults without it. Needs --enable_batching.",
    )
    flags.DEFINE_float(
        "file_system_poll_wait_seconds", 1.0, "Seconds between looks for new versions in the base paths; 0 = load once, never look again."
    )
    flags.DEFINE_float(
        "model_config_file_poll_wait_seconds", 0,
        "Seconds between re-reads of --model_config_file (models added or removed, policies, labels); 0 = read it once.",
    )
    flags.DEFINE_bool(
        "allow_version_labels_for_unavailable_models", False,
        "Let a version label in --model_config_file name a version that is not loaded (requests to it get 404).",
    )
    flags.DEFINE_integer(
        "rest_api_timeout_in_ms", 30000, "A REST predict request that takes longer gets a 504 (its work still finishes); 0 = no limit."
    )
    flags.DEFINE_integer("max_request_bytes", 8 << 20, "Largest request body (REST) or message (gRPC) accepted, in bytes.")
    flags.DEFINE_bool("playground", True, "Serve the playground page at GET / and the model list it reads at /keraslm/models.")


def main(argv):
    del argv
    from keraslm.errors import InvalidInputError
    from keraslm.serving import settings
    from keraslm.serving.server import ServerConfig, serve

    one_model = bool(FLAGS.model_name or FLAGS.model_base_path)
    if one_model and FLAGS.model_config_file:
        raise InvalidInputError("give either --model_config_file or --model_name with --model_base_path, not both")
    if FLAGS.model_config_file:
        specs = settings.read_model_config_file(FLAGS.model_config_file)
    elif FLAGS.model_base_path:
        specs = settings.model_from_flags(FLAGS.model_name, FLAGS.model_base_path)
    elif FLAGS.model_name:
        raise InvalidInputError(f"--model_name={FLAGS.model_name} needs --model_base_path: the model's export directory")
    else:
        raise InvalidInputError("nothing to serve: give --model_name and --model_base_path, or --model_config_file")
    if FLAGS.batching_parameters_file and not FLAGS.enable_batching:
        raise InvalidInputError("--batching_parameters_file needs --enable_batching")
    for name in ("port", "rest_api_port"):
        if not 0 <= FLAGS[name].value <= 65535:
            raise InvalidInputError(f"--{name}={FLAGS[name].value} is not a port number (0-65535)")
    if not FLAGS.port and not FLAGS.rest_api_port:
        raise InvalidInputError("--port=0 and --rest_api_port=0 leave nothing to serve on; keep at least one")
    if FLAGS.port and FLAGS.port == FLAGS.rest_api_port:
        raise InvalidInputError(f"--port and --rest_api_port are both {FLAGS.port}; give them different ports")
    if FLAGS.max_request_bytes < 1:
        raise InvalidInputError(f"--max_request_bytes={FLAGS.max_request_bytes} must be at least 1")
    if FLAGS.file_system_poll_wait_seconds < 0:
        raise InvalidInputError(f"--file_system_poll_wait_seconds={FLAGS.file_system_poll_wait_seconds} must be 0 or more")
    if FLAGS.model_config_file_poll_wait_seconds < 0 or FLAGS.rest_api_timeout_in_ms < 0:
        raise InvalidInputError("--model_config_file_poll_wait_seconds and --rest_api_timeout_in_ms must be 0 or more")
    if FLAGS.model_config_file_poll_wait_seconds and not FLAGS.model_config_file:
        raise InvalidInputError("--model_config_file_poll_wait_seconds needs --model_config_file")
    batching = settings.read_batching_parameters(FLAGS.batching_parameters_file) if FLAGS.enable_batching else None
    config_file = FLAGS.model_config_file
    config = ServerConfig(
        specs=specs,
        rest_api_host=FLAGS.rest_api_host,
        rest_api_port=FLAGS.rest_api_port,
        grpc_port=FLAGS.port,
        batching=batching,
        poll_seconds=FLAGS.file_system_poll_wait_seconds,
        max_request_bytes=FLAGS.max_request_bytes,
        playground=FLAGS.playground,
        rest_timeout_seconds=FLAGS.rest_api_timeout_in_ms / 1000 or None,
        config_reader=(lambda: settings.read_model_config_file(config_file)) if config_file else None,
        config_poll_seconds=FLAGS.model_config_file_poll_wait_seconds,
        allow_unavailable_labels=FLAGS.allow_version_labels_for_unavailable_models,
    )
    try:
        serve(config)
    except ValueError as error:
        raise InvalidInputError(str(error)) from None


def run():
    define_flags()
    run_main(main, "keraslm-serve")


if __name__ == "__main__":
    run()
