"""A small client for TF Serving's REST API (keraslm-serve or tensorflow_model_server).

  from keraslm.serving.client import RestClient
  client = RestClient("http://127.0.0.1:8501")
  client.predict("shakespeare", instances=[{"prompt": "ROMEO:", ...}], signature_name="generate")
  client.status("shakespeare"); client.metadata("shakespeare")

Standard library only, so it runs where TensorFlow is not installed.
"""

import json
import urllib.error
import urllib.parse
import urllib.request


class ServingError(RuntimeError):
    """A non-200 answer: .status is the HTTP status, the message is the server's "error" text."""

    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class RestClient:
    def __init__(self, url="http://127.0.0.1:8501", timeout=60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _path(self, name, version=None, label=None):
        path = f"/v1/models/{urllib.parse.quote(name, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{urllib.parse.quote(label, safe='')}"
        return path

    def request(self, method, path, body=None):
        """The decoded JSON answer; ServingError for any other status than 200."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            text = error.read().decode("utf-8", errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                message = text
            raise ServingError(error.code, message) from None

    def status(self, name, version=None, label=None):
        """{"model_version_status": [{"version", "state", "status"}]}: GET /v1/models/{name}."""
        return self.request("GET", self._path(name, version, label))

    def metadata(self, name, version=None, label=None):
        """{"model_spec", "metadata": {"signature_def": ...}}: GET /v1/models/{name}/metadata."""
        return self.request("GET", self._path(name, version, label) + "/metadata")

    def predict(self, name, instances=None, inputs=None, signature_name=None, version=None, label=None):
        """`predictions` for row-format `instances`, or `outputs` for columnar `inputs`."""
        if (instances is None) == (inputs is None):
            raise ValueError("give exactly one of instances (row format) and inputs (columnar format)")
        body = {"instances": instances} if instances is not None else {"inputs": inputs}
        if signature_name:
            body["signature_name"] = signature_name
        answer = self.request("POST", self._path(name, version, label) + ":predict", body)
        return answer["predictions"] if instances is not None else answer["outputs"]

    def generate(self, name, prompts, max_new_tokens=100, temperature=0.8, top_k=0, top_p=1.0,
                 repetition_penalty=1.0, seed=0, stop="", version=None):
        """A keraslm language model's `generate` signature, with every input filled in.

        prompts: a list of strings -> a list of continuations; one string -> one continuation."""
        if isinstance(prompts, str):
            return self.generate(name, [prompts], max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop, version)[0]
        if not prompts:
            return []
        rows = [
            {
                "prompt": prompt, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
                "top_p": top_p, "repetition_penalty": repetition_penalty, "seed": seed + index, "stop": stop,
            }
            for index, prompt in enumerate(prompts)
        ]
        return [row["text"] for row in self.predict(name, instances=rows, signature_name="generate", version=version)]

    def classify(self, name, texts, version=None):
        """A keraslm classifier's serving_default: [{"label", "label_id", "scores"}] for a list of texts,
        one such dict for one string."""
        if isinstance(texts, str):
            return self.classify(name, [texts], version)[0]
        if not texts:
            return []
        return self.predict(name, instances=[{"text": text} for text in texts], version=version)
