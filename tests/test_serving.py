"""keraslm-serve as a client sees it: the real server in a subprocess on a free loopback port,
called over HTTP and gRPC (status, metadata, predict, versions, hot reload, batching, bad
requests, SIGTERM), and its settings files."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import START_TIMEOUT, ServeProcess, free_port, run_cli
from test_classify import _classify_args, _toy_examples, _write_csv

from keraslm.serving.client import RestClient, ServingError

def _copy_version(source_dir, target_base, version):
    """Copies a version directory to target_base/<version> as keraslm-export does: staged, then renamed."""
    staging = target_base / f".staging-{version}"
    shutil.copytree(source_dir, staging)
    os.rename(staging, target_base / str(version))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, trained_models):
    """Base directories lm/ (the tiny Transformer LM, version 1) and clf/ (a toy classifier, version 1)."""
    root = tmp_path_factory.mktemp("serving")
    lm_source = trained_models["transformer"]["export_dir"] / "1"
    (root / "lm").mkdir()
    _copy_version(lm_source, root / "lm", 1)
    train = root / "toy.csv"
    _write_csv(train, _toy_examples(240, seed=1))
    completed = run_cli(
        "train", *_classify_args(train, root / "clf_run", f"--export_dir={root / 'clf'}", "--model=lstm", "--num_layers=1", "--hidden_dim=32")
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "lm" base_path: "{root / "lm"}" model_platform: "tensorflow" }}\n'
        f'  config {{ name: "clf" base_path: "{root / "clf"}" model_platform: "tensorflow"\n'
        '           version_labels { key: "stable" value: 1 } }\n'
        "}\n",
        encoding="utf-8",
    )
    batching = root / "batching.config"
    # A long timeout: concurrent requests in the batching test surely meet in one batch.
    batching.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 300000 }\nnum_batch_threads { value: 1 }\n")
    return {"root": root, "config": config, "batching": batching, "lm_source": lm_source}


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    """One batching server for the module: REST and gRPC, 4 KiB request limit, fast version polling."""
    process = ServeProcess(
        tmp_path_factory.mktemp("server"),
        f"--model_config_file={exports['config']}",
        "--enable_batching",
        f"--batching_parameters_file={exports['batching']}",
        "--file_system_poll_wait_seconds=0.2",
        "--max_request_bytes=4096",
        "--model_config_file_poll_wait_seconds=0.3",
        grpc=True,
    )
    yield process
    assert process.stop() == 0, process.log()[-3000:]


GENERATE_ROW = {"prompt": "ROMEO:", "max_new_tokens": 12, "temperature": 0.8, "top_k": 0, "top_p": 1.0,
                "repetition_penalty": 1.0, "seed": 3, "stop": ""}


def test_status_metadata_and_predict(server):
    status = server.client.status("lm")
    assert status["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
    metadata = server.client.metadata("lm")
    assert metadata["model_spec"] == {"name": "lm", "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "generate", "score"}
    assert set(signatures["generate"]["inputs"]) == set(GENERATE_ROW)
    assert signatures["generate"]["inputs"]["max_new_tokens"]["dtype"] == "DT_INT32"

    # Row format: one object per row; columnar: one list per input. Both give the same answer.
    rows = server.client.predict("clf", instances=[{"text": "a great film"}, {"text": "今天外卖很差"}])
    assert [row["label"] for row in rows] == ["pos", "neg"]
    for row in rows:
        assert set(row) == {"label", "label_id", "scores"} and abs(sum(row["scores"]) - 1) < 1e-5
    columns = server.client.predict("clf", inputs={"text": ["a great film", "今天外卖很差"]})
    assert columns["label"] == ["pos", "neg"]
    assert sum(columns["scores"], []) == pytest.approx(sum((row["scores"] for row in rows), []), abs=1e-6)
    # "" is serving_default, as in TF Serving.
    assert server.client.predict("clf", instances=["great"], signature_name="")[0]["label"] == "pos"
    assert server.raw("POST", "/v1/models/clf:predict", b'{"signature_name": "", "instances": ["great"]}')[0] == 200
    # A bare value per row for a one-input signature, as TF Serving takes it.
    assert [row["label"] for row in server.client.predict("clf", instances=["a bad film"])] == ["neg"]

    # The LM's three signatures. A seed makes `generate` repeatable.
    first = server.client.predict("lm", instances=[GENERATE_ROW, {**GENERATE_ROW, "max_new_tokens": 5}], signature_name="generate")
    again = server.client.predict("lm", instances=[GENERATE_ROW], signature_name="generate")
    assert first[0]["num_tokens"] == 12 and first[1]["num_tokens"] == 5 and first[0]["text"] == again[0]["text"]
    scores = server.client.predict("lm", inputs={"text": ["ROMEO: what", "First Citizen:"]}, signature_name="score")
    assert scores["num_tokens"] == [10, 13] and all(value < 0 for value in scores["log_likelihood"])
    texts = server.client.predict("lm", instances=["ROMEO:"])  # serving_default: text only
    assert isinstance(texts[0], str) and texts[0]


def test_named_version_and_label(server):
    assert server.client.status("clf", version=1)["model_version_status"][0]["state"] == "AVAILABLE"
    assert server.client.predict("clf", instances=["great"], version=1)[0]["label"] == "pos"
    assert server.client.predict("clf", instances=["great"], label="stable")[0]["label"] == "pos"
    assert server.client.metadata("clf", label="stable")["model_spec"]["version"] == "1"
    for call in (lambda: server.client.predict("clf", instances=["great"], version=7), lambda: server.client.status("clf", version=7),
                 lambda: server.client.status("clf", label="canary")):
        with pytest.raises(ServingError) as caught:
            call()
        assert caught.value.status == 404


BAD_REQUESTS = [
    # (name, method, path, body, status, words the error must contain)
    ("malformed JSON", "POST", "/v1/models/clf:predict", b'{"instances": [', 400, "malformed JSON"),
    ("not an object", "POST", "/v1/models/clf:predict", b"[1, 2]", 400, "JSON object"),
    ("empty body", "POST", "/v1/models/clf:predict", b"", 400, "empty"),
    ("wrong input name", "POST", "/v1/models/clf:predict", b'{"instances": [{"txt": "hi"}]}', 400, "'txt'"),
    ("wrong dtype", "POST", "/v1/models/clf:predict", b'{"instances": [{"text": 5}]}', 400, "takes strings"),
    ("wrong dtype for an int", "POST", "/v1/models/lm:predict",
     json.dumps({"signature_name": "generate", "instances": [{**GENERATE_ROW, "max_new_tokens": "ten"}]}).encode(), 400, "int32"),
    ("wrong shape", "POST", "/v1/models/clf:predict", b'{"inputs": {"text": [["a", "b"]]}}', 400, "shape"),
    ("ragged rows", "POST", "/v1/models/lm:predict", b'{"signature_name": "score", "inputs": {"text": [["a", "b"], ["c"]]}}', 400, "ragged"),
    ("half a surrogate pair", "POST", "/v1/models/clf:predict", b'{"instances": ["\\ud800x"]}', 400, "surrogate"),
    ("beyond float32", "POST", "/v1/models/lm:predict",
     json.dumps({"signature_name": "generate", "instances": [{**GENERATE_ROW, "temperature": 1e39}]}).encode(), 400, "float32"),
    ("no model name", "GET", "/v1/models", b"", 404, "name a model"),
    ("beyond int64", "POST", "/v1/models/lm:predict",
     json.dumps({"signature_name": "generate", "instances": [{**GENERATE_ROW, "seed": 10**20}]}).encode(), 400, "int64's range"),
    ("empty instances", "POST", "/v1/models/clf:predict", b'{"instances": []}', 400, "empty"),
    ("both formats", "POST", "/v1/models/clf:predict", b'{"instances": ["a"], "inputs": ["a"]}', 400, "exactly one"),
    ("missing input", "POST", "/v1/models/lm:predict", b'{"signature_name": "generate", "instances": [{"prompt": "a"}]}', 400, "missing input"),
    ("unknown signature", "POST", "/v1/models/clf:predict", b'{"signature_name": "nope", "instances": ["a"]}', 400, "nope"),
    ("limit checked in the graph", "POST", "/v1/models/lm:predict",
     json.dumps({"signature_name": "generate", "instances": [{**GENERATE_ROW, "max_new_tokens": 10**6}]}).encode(), 400, "max_new_tokens"),
    ("body too large", "POST", "/v1/models/clf:predict", b'{"instances": ["' + b"x" * 5000 + b'"]}', 413, "max_request_bytes"),
    ("unknown model", "GET", "/v1/models/nope", b"", 404, "nope"),
    ("unknown version", "POST", "/v1/models/clf/versions/9:predict", b'{"instances": ["a"]}', 404, "version 9"),
    ("path traversal", "GET", "/v1/models/..%2F..%2Fetc/metadata", b"", 404, ""),
    ("dot-dot name", "GET", "/v1/models/../metadata", b"", 404, ""),
    ("bad version", "GET", "/v1/models/clf/versions/x1", b"", 400, "not a version number"),
    ("unknown endpoint", "GET", "/v2/anything", b"", 404, "no such endpoint"),
    ("classify API", "POST", "/v1/models/clf:classify", b'{"examples": []}', 400, ":predict"),
    ("wrong method", "GET", "/v1/models/clf:predict", b"", 405, "POST"),
]


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server):
    for name, method, path, body, status, words in BAD_REQUESTS:
        got, answer = server.raw(method, path, body, {"Content-Type": "application/json"})
        assert got == status, (name, answer)
        assert isinstance(answer, dict) and set(answer) == {"error"}, (name, answer)
        assert words in answer["error"], (name, answer)
    assert server.process.poll() is None
    assert server.client.predict("clf", instances=["great"])[0]["label"] == "pos"


def test_concurrent_requests_are_batched(server):
    before = _batch_counts(server)
    barrier = threading.Barrier(12)
    results, errors = [], []

    def call(index):
        barrier.wait()
        try:
            results.append(server.client.predict("clf", instances=[{"text": "great" if index % 2 else "bad"}]))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=call, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 12
    assert sorted(result[0]["label"] for result in results) == ["neg"] * 6 + ["pos"] * 6
    after = _batch_counts(server)
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    # 12 one-row requests ran as fewer, larger batches (the batch timeout is 0.3 s).
    assert sum(size * count for size, count in new.items()) == 12
    assert max(size for size, count in new.items() if count) > 1
    assert sum(new.values()) < 12


def _batch_counts(server):
    counts = {}
    for line in server.metric(':tensorflow:serving:batching_session:processed_batch_size{model_name="clf"'):
        size = int(line.split('batch_size="')[1].split('"')[0])
        counts[size] = int(line.rsplit(" ", 1)[1])
    return counts


def test_new_version_hot_loaded_while_requests_run(server, exports):
    base = exports["root"] / "clf"
    stop, errors, answers = threading.Event(), [], []

    def keep_asking():
        while not stop.is_set():
            try:
                answers.append(server.client.predict("clf", instances=["great"])[0]["label"])
            except Exception as error:  # noqa: BLE001
                errors.append(error)

    thread = threading.Thread(target=keep_asking)
    thread.start()
    try:
        # A half-written version (a copy still under way): ignored while incomplete.
        partial = base / "2"
        partial.mkdir()
        shutil.copy(base / "1" / "saved_model.pb", partial / "saved_model.pb")
        time.sleep(1.5)
        assert [entry["version"] for entry in server.client.status("clf")["model_version_status"]] == ["1"]
        shutil.copytree(base / "1" / "assets", partial / "assets")
        shutil.copytree(base / "1" / "assets.extra", partial / "assets.extra")
        shutil.copytree(base / "1" / "variables", partial / "variables")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            versions = [entry["version"] for entry in server.client.status("clf")["model_version_status"]]
            if versions == ["2"]:
                break
            time.sleep(0.2)
        assert versions == ["2"], server.log()[-2000:]
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert len(answers) > 5 and set(answers) == {"pos"}
    assert "model 'clf' version 2 is available" in server.log()
    assert server.client.metadata("clf")["model_spec"]["version"] == "2"
    with pytest.raises(ServingError) as caught:
        server.client.predict("clf", instances=["great"], version=1)
    assert caught.value.status == 404

    # A directory named by a number beyond int64 is no version (TF Serving's versions are int64).
    _copy_version(base / "2", base, 99999999999999999999)
    # A newer version that fails to load (a damaged warm-up file) is reported; version 2 keeps serving.
    _copy_version(base / "2", base, 3)
    with open(base / "3" / "assets.extra" / "tf_serving_warmup_requests", "r+b") as file:
        file.seek(20)
        file.write(b"garbage")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {entry["version"]: entry for entry in server.client.status("clf")["model_version_status"]}
        if "3" in states:
            break
        time.sleep(0.2)
    assert states["3"]["state"] == "END" and states["3"]["status"]["error_message"], states
    assert set(states) == {"2", "3"}, states
    assert states["2"]["state"] == "AVAILABLE"
    assert server.client.metadata("clf")["model_spec"]["version"] == "2"
    assert "model 'clf' version 3" in server.log() and "did not load" in server.log()


def test_export_carries_tf_serving_warmup_requests(server, exports):
    """keraslm-export writes TF Serving's warm-up file; the server replays it before serving."""
    from tensorflow.python.lib.io import tf_record
    from tensorflow_serving.apis import prediction_log_pb2

    path = exports["root"] / "lm" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(record) for record in tf_record.tf_record_iterator(str(path))]
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert names == ["generate", "generate", "generate", "serving_default", "score"]
    assert "model 'lm' version 1 is available" in server.log() and "5 warm-up requests" in server.log()


def test_grpc_predict_metadata_and_status(server):
    grpc = pytest.importorskip("grpc")
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
    )

    texts = ["a great film", "今天外卖很差"]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "clf"
    request.model_spec.signature_name = "serving_default"
    request.inputs["text"].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]),
            string_val=[text.encode("utf-8") for text in texts],
        )
    )
    response = stub.Predict(request, timeout=60)
    assert [value.decode() for value in response.outputs["label"].string_val] == ["pos", "neg"]
    rest = server.client.predict("clf", inputs={"text": texts})
    assert list(response.outputs["scores"].float_val) == pytest.approx(sum(rest["scores"], []), abs=1e-6)
    assert response.model_spec.version.value >= 1

    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata_request.model_spec.name = "lm"
    metadata = stub.GetModelMetadata(metadata_request, timeout=60)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "generate", "score"}

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "lm"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=60)
    assert [(entry.version, entry.state) for entry in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]

    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    request.model_spec.name = "clf"
    # A TensorProto may repeat its last value to fill its shape; here every value must be sent.
    request.inputs["text"].tensor_shape.dim[0].size = 2_000_000
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "send every value" in caught.value.details()
    request.inputs["text"].tensor_shape.dim[0].size = 2
    request.inputs["txt"].CopyFrom(request.inputs["text"])
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "txt" in caught.value.details()
    channel.close()


def test_model_config_file_is_re_read(server, exports):
    """--model_config_file_poll_wait_seconds: a model added to the file is served, a label moves,
    a removed model is unloaded; a file that does not parse changes nothing."""
    config = exports["config"]
    original = config.read_text(encoding="utf-8")
    served = next(
        int(entry["version"]) for entry in server.client.status("clf")["model_version_status"] if entry["state"] == "AVAILABLE"
    )
    try:
        config.write_text(
            original.replace("value: 1 }", f"value: {served} }}").rstrip().rstrip("}")
            + f'  config {{ name: "lm2" base_path: "{exports["root"] / "lm"}" model_platform: "tensorflow" }}\n}}\n',
            encoding="utf-8",
        )
        # The label moves once the file's models are loaded (labels may only name loaded versions).
        _wait_until(lambda: _answers(server, "lm2") and _label_version(server, "clf", "stable") == str(served), server)
        config.write_text("model_config_list { config { name: ", encoding="utf-8")  # cut short
        time.sleep(1.5)
        assert _answers(server, "lm2") and "was not applied" in server.log()
    finally:
        config.write_text(original, encoding="utf-8")
    _wait_until(lambda: not _answers(server, "lm2") and "model 'lm2' is no longer in the config file" in server.log(), server)


def _answers(server, name):
    try:
        server.client.status(name)
        return True
    except ServingError:
        return False


def _label_version(server, name, label):
    try:
        return server.client.metadata(name, label=label)["model_spec"]["version"]
    except ServingError:
        return None


def _wait_until(condition, server, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.2)


def test_playground_page_and_model_list(server):
    status, page = server.raw("GET", "/")
    assert status == 200 and "<select" in page
    status, listing = server.raw("GET", "/keraslm/models")
    models = {model["name"]: model for model in listing["models"]}
    assert models["lm"]["task"] == "lm" and models["lm"]["defaults"]["max_new_tokens_limit"] > 0
    assert models["clf"]["task"] == "classify" and models["clf"]["labels"] == ["neg", "pos"]


def test_sigterm_finishes_the_request_in_flight(exports, tmp_path):
    """No batching here, so the unbatched path is exercised too."""
    server = ServeProcess(tmp_path, "--model_name=lm", f"--model_base_path={exports['root'] / 'lm'}", wait_for="lm")
    limit = server.client.request("GET", "/keraslm/models")["models"][0]["defaults"]["max_new_tokens_limit"]
    result = {}

    def long_request():
        try:
            rows = [{**GENERATE_ROW, "max_new_tokens": limit, "seed": index} for index in range(16)]
            result["answer"] = server.client.predict("lm", instances=rows, signature_name="generate")
        except Exception as error:  # noqa: BLE001
            result["error"] = error
        result["time"] = time.monotonic()

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(1.0)
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)
    assert server.process.wait(timeout=90) == 0, server.log()[-2000:]
    assert "error" not in result, result
    assert result["time"] > sent, "the request finished before SIGTERM; make it longer"
    assert len(result["answer"]) == 16 and all(row["num_tokens"] == limit for row in result["answer"])
    with pytest.raises(OSError):
        server.client.status("lm")
    server.stop()


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="tensorflow_model_server is not on PATH (it cannot be installed here); see docs/serving.md")
def test_tensorflow_model_server_gives_the_same_answers(server, exports, tmp_path):
    port = free_port()
    log = open(tmp_path / "tfs.log", "w", encoding="utf-8")
    process = subprocess.Popen(
        ["tensorflow_model_server", f"--rest_api_port={port}", "--port=0", f"--model_config_file={exports['config']}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        real = RestClient(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                real.status("clf")
                break
            except (OSError, ServingError):
                assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "tfs.log").read_text()
                time.sleep(0.5)
        body = {"inputs": {"text": ["a great film", "今天外卖很差"]}}
        assert real.predict("clf", **body)["label"] == server.client.predict("clf", **body)["label"]
        score = {"inputs": {"text": ["ROMEO: what"]}, "signature_name": "score"}
        assert real.predict("lm", **score)["log_likelihood"] == pytest.approx(
            server.client.predict("lm", **score)["log_likelihood"], rel=1e-4
        )
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


# === Settings and flags (no server) ===


def test_model_config_file_errors_name_the_line(tmp_path):
    from keraslm.errors import InvalidInputError
    from keraslm.serving.settings import read_batching_parameters, read_model_config_file

    (tmp_path / "m").mkdir()
    config = tmp_path / "models.config"
    config.write_text('model_config_list {\n  config { name: "a" base_path: "m"\n  bogus: 1 }\n}\n')
    with pytest.raises(InvalidInputError, match=r"models.config:3:\d+ .*bogus"):
        read_model_config_file(config)
    config.write_text('model_config_list { config { name: "a" base_path: "m" model_platform: "pytorch" } }')
    with pytest.raises(InvalidInputError, match="model_platform 'pytorch'"):
        read_model_config_file(config)
    config.write_text('model_config_list { config { name: "a" base_path: "missing" } }')
    with pytest.raises(FileNotFoundError, match="missing: no such directory"):
        read_model_config_file(config)
    config.write_text('model_config_list { config { name: "a" base_path: "m" model_version_policy { latest { num_versions: 2 } } } }')
    (spec,) = read_model_config_file(config)
    assert (spec.base_path, spec.policy, spec.num_versions) == (str(tmp_path / "m"), "latest", 2)

    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 }\nnum_batch_threads { value: 0 }\n")
    with pytest.raises(InvalidInputError, match="num_batch_threads must be at least 1"):
        read_batching_parameters(batching)
    batching.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 100 }\n")
    options = read_batching_parameters(batching)
    assert (options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches) == (8, 100, 10)


def test_flag_errors_are_one_line(tmp_path, exports):
    cases = [
        ([], "nothing to serve"),
        ([f"--model_base_path={exports['root'] / 'lm'}", "--model_name=a", f"--model_config_file={exports['config']}"], "either"),
        ([f"--model_base_path={exports['root'] / 'lm' / '1'}", "--model_name=a"], "version directory"),
        ([f"--model_config_file={exports['config']}", f"--batching_parameters_file={exports['batching']}"], "--enable_batching"),
        (["--model_name=a", f"--model_base_path={tmp_path}"], "no version could be loaded"),
    ]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = taken.getsockname()[1]
    one_model = ["--model_name=a", f"--model_base_path={exports['root'] / 'lm'}"]
    cases += [
        ([*one_model, f"--port={busy}"], f"--port={busy}: cannot listen"),
        ([*one_model, f"--rest_api_port={busy}"], f"--rest_api_port={busy}: cannot listen"),
        (["--model_name=a:b", f"--model_base_path={exports['root'] / 'lm'}"], "cannot appear in a URL"),
    ]
    for args, words in cases:
        ports = [arg.split("=")[0] for arg in args]
        defaults = [] if "--rest_api_port" in ports else ["--rest_api_port=0"]
        defaults += [] if "--port" in ports else [f"--port={free_port()}"]
        completed = run_cli("serve", *args, *defaults, timeout=120)
        assert completed.returncode == 2, (args, completed.stderr[-2000:])
        last = completed.stderr.strip().splitlines()[-1]
        assert last.startswith("keraslm-serve: error:") and words in last, (args, completed.stderr[-2000:])
        assert "Traceback" not in completed.stderr
