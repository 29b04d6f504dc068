"""The playground page (GET /) in a real headless Chromium against a real keraslm-serve.

Needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver) and
selenium (pip install selenium); skipped without them. Screenshots of each state go to
$KERASLM_SCREENSHOT_DIR when set, else to the test's tmp_path.
"""

import importlib.util
import json
import os
import shlex
from pathlib import Path

import pytest

from conftest import ServeProcess, run_cli
from test_classify import TINY, _classify_args, _toy_examples, _write_csv

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium dials out at start-up; a closed network refuses it, noisily.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--window-size=1280,1500",
    "--lang=en-US",
]
REQUEST_SECONDS = 120
LM_PROMPT = "ROMEO:"
ENGLISH_TEXT = "wonderful film and the plot was lovely"
CHINESE_TEXT = "好吃外卖今天味道很棒"


def _browser_missing():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium (python package)")
    return missing


# Checked at collection, so a machine without a browser skips before any model is trained.
pytestmark = pytest.mark.skipif(
    bool(_browser_missing()),
    reason=f"no headless browser ({', '.join(_browser_missing())} missing): install Debian's chromium and "
    "chromium-driver, and pip install selenium",
)


# === The models and the server ===


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory):
    """A tiny Transformer classifier (labels neg, pos) on test_classify's toy set, English and Chinese."""
    root = tmp_path_factory.mktemp("playground_classifier")
    train = root / "train.csv"
    _write_csv(train, _toy_examples(240, seed=1))
    export_dir = root / "export"
    completed = run_cli("train", *_classify_args(train, root / "run", f"--export_dir={export_dir}", *TINY["transformer"]))
    assert completed.returncode == 0, completed.stderr[-3000:]
    return export_dir


@pytest.fixture(scope="module")
def server(trained_models, classifier_export, tmp_path_factory):
    """keraslm-serve on a free 127.0.0.1 port serving "lm" (a char Transformer) and "clf"."""
    directory = tmp_path_factory.mktemp("playground_server")
    config = directory / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "lm" base_path: "{Path(trained_models["transformer"]["export_dir"]).resolve()}" '
        'model_platform: "tensorflow" }\n'
        f'  config {{ name: "clf" base_path: "{Path(classifier_export).resolve()}" model_platform: "tensorflow" }}\n'
        "}\n",
        encoding="utf-8",
    )
    process = ServeProcess(directory, f"--model_config_file={config}", wait_for=("lm", "clf"))
    yield process
    process.stop()


# === The browser ===


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Selenium reaches chromedriver at localhost; keep an http_proxy in the environment out of it.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "localhost", "127.0.0.1"])))
    # An explicit chromedriver: Selenium Manager (which downloads drivers) never runs.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path):
    directory = Path(os.environ.get("KERASLM_SCREENSHOT_DIR") or tmp_path / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class Page:
    """The playground as the tests drive it: by element ids and body[data-state]."""

    def __init__(self, driver, screenshots, server):
        from selenium.webdriver.common.by import By

        self.driver, self.screenshots, self.server, self.by = driver, screenshots, server, By

    def find(self, element_id):
        return self.driver.find_element(self.by.ID, element_id)

    def text(self, element_id):
        return self.find(element_id).get_property("textContent")

    def state(self):
        return self.driver.execute_script("return document.body.dataset.state")

    def wait_for(self, *states, timeout=REQUEST_SECONDS):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(lambda _: self.state() in states)
        except TimeoutException:
            self.shot("timeout")
            raise AssertionError(
                f"page state stayed {self.state()!r}, wanted {states}; error element: {self.text('error')!r}\n"
                f"server log:\n{self.server.log()[-4000:]}"
            ) from None
        return self.state()

    def pick(self, name):
        from selenium.webdriver.support.ui import Select

        Select(self.find("model")).select_by_value(name)
        assert self.wait_for("idle") == "idle"

    def type(self, element_id, text):
        element = self.find(element_id)
        element.clear()
        element.send_keys(text)

    def run(self):
        self.find("run").click()
        return self.wait_for("done", "error")

    def shot(self, name):
        self.driver.save_screenshot(str(self.screenshots / f"{name}.png"))

    def curl_body(self):
        """The JSON body of the curl command the page shows, as the shell would pass it."""
        words = shlex.split(self.text("curl").replace("\\\n", " "))
        return words[words.index("-d") + 1]

    def severe_console_messages(self):
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_playground_generates_classifies_and_shows_errors(server, browser, screenshots):
    page = Page(browser, screenshots, server)
    base = server.url
    status, listing = server.raw("GET", "/keraslm/models")
    assert status == 200, listing
    served = {model["name"]: model for model in listing["models"]}
    assert served["lm"]["task"] == "lm" and served["clf"]["task"] == "classify", listing

    browser.get(base + "/")
    page.wait_for("idle", timeout=60)
    options = {o.get_attribute("value") for o in page.find("model").find_elements(page.by.TAG_NAME, "option")}
    assert options == {"lm", "clf"}
    page.shot("01_loaded")

    # --- The language model: the continuation after the prompt, num_tokens, and a curl that reproduces it.
    page.pick("lm")
    assert page.find("run").text == "Generate"
    limit = served["lm"]["defaults"]["max_new_tokens_limit"]
    assert page.find("max_new_tokens").get_attribute("max") == str(limit)
    page.type("prompt", LM_PROMPT)
    page.type("max_new_tokens", "20")
    page.type("seed", "1234")
    assert page.run() == "done", page.text("error")
    output = page.text("output")
    continuation = browser.find_element(page.by.CSS_SELECTOR, "#output .continuation").get_property("textContent")
    assert output.startswith(LM_PROMPT) and len(output) > len(LM_PROMPT), output
    assert output == LM_PROMPT + continuation and continuation
    assert 1 <= int(page.text("num_tokens")) <= 20
    assert page.text("latency").endswith("s")
    curl = page.text("curl")
    assert f"{base}/v1/models/lm:predict" in curl and '"generate"' in curl, curl
    body = page.curl_body()
    request = json.loads(body)
    assert request["signature_name"] == "generate" and len(request["instances"]) == 1, request
    assert request["instances"][0] == {
        "prompt": LM_PROMPT, "max_new_tokens": 20, "temperature": served["lm"]["defaults"]["temperature"],
        "top_k": 0, "top_p": 1, "repetition_penalty": 1, "seed": 1234, "stop": "",
    }
    # The command shown is the request made: replayed, the same seed gives the same text.
    status, replayed = server.raw("POST", "/v1/models/lm:predict", body.encode("utf-8"))
    assert status == 200, replayed
    assert replayed["predictions"][0]["text"] == continuation
    page.shot("02_lm_generated")

    # --- The classifier: one bar per label, probabilities summing to 1, English then Chinese.
    page.pick("clf")
    assert page.find("run").text == "Classify"
    labels = served["clf"]["labels"]
    for index, text in enumerate((ENGLISH_TEXT, CHINESE_TEXT)):
        page.type("prompt", text)
        if index == 0:
            assert page.run() == "done", page.text("error")
        else:  # Ctrl+Enter runs too.
            from selenium.webdriver.common.keys import Keys

            page.find("prompt").send_keys(Keys.CONTROL, Keys.ENTER)
            assert page.wait_for("done", "error") == "done", page.text("error")
        rows = browser.find_elements(page.by.CSS_SELECTOR, "#scores .score-row")
        assert [row.find_element(page.by.CLASS_NAME, "score-label").get_property("textContent") for row in rows] == labels
        shown = [float(row.find_element(page.by.CLASS_NAME, "score-value").get_property("textContent")) for row in rows]
        assert abs(sum(shown) - 1) < 2e-3, shown
        body = page.curl_body()
        assert json.loads(body) == {"signature_name": "serving_default", "instances": [{"text": text}]}
        assert text in page.text("curl")  # Chinese as typed, not \u-escaped
        status, direct = server.raw("POST", "/v1/models/clf:predict", body.encode("utf-8"))
        assert status == 200, direct
        assert page.text("label") == direct["predictions"][0]["label"] == labels[shown.index(max(shown))]
        page.shot(f"0{3 + index}_classified_{'english' if index == 0 else 'chinese'}")
    assert page.severe_console_messages() == []

    # --- An error: max_new_tokens over the export's limit; the page shows the server's message.
    page.pick("lm")
    # Back on the language model, the fields are as they were left.
    assert [page.find(name).get_property("value") for name in ("prompt", "max_new_tokens", "seed")] == [LM_PROMPT, "20", "1234"]
    page.type("max_new_tokens", str(limit + 1))
    assert page.run() == "error"
    status, refused = server.raw("POST", "/v1/models/lm:predict", page.curl_body().encode("utf-8"))
    assert status == 400 and "max_new_tokens" in refused["error"], (status, refused)
    assert page.find("error").is_displayed()
    assert page.text("error-message") == refused["error"]
    assert "400" in page.text("error-title")
    page.shot("05_error")
