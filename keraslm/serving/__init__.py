"""keraslm-serve: serves SavedModels over TensorFlow Serving's REST and gRPC APIs.

  settings.py   --model_config_file and --batching_parameters_file (TF Serving's text protos)
  tensors.py    request values <-> numpy, checked against a signature (JSON and TensorProto)
  batching.py   merges concurrent requests into one run of a signature
  servable.py   one loaded version: its Session, signatures, warm-up and batchers
  models.py     loads versions, watches base paths, switches to new versions atomically
  rest.py       the REST API (Starlette) and the playground page
  grpc_api.py   PredictionService and ModelService over gRPC
  server.py     starts both, stops on SIGTERM after in-flight requests
  metrics.py    request and batch-size counters (/monitoring/prometheus/metrics)
  client.py     a small REST client
"""
