"""Installs keraslm and its command-line tools.

The pins are the versions this project is tested with; TensorFlow, tensorflow-text and
keras-nlp must move together (tensorflow-text's custom ops are built against one TF release).
"""

from setuptools import find_packages, setup

setup(
    name="keraslm",
    version="0.1.0",
    description="Raw text to trained Keras language models, exported as SavedModels that take raw strings.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["keraslm", "keraslm.*"]),
    package_data={"keraslm.serving": ["playground.html"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorflow-text==2.21.1",
        "keras>=3.15,<3.16",
        "keras-nlp==0.32.0",
        "absl-py>=2.1",
        # TensorBoard scalars (tf.summary needs it; TF 2.21 no longer installs it).
        "tensorboard>=2.20",
        # Loss-curve PNG in the work directory.
        "matplotlib>=3.8",
        # keraslm-serve: TF Serving's protos and gRPC stubs (moves with TensorFlow), and an
        # async HTTP stack for the REST API.
        "tensorflow-serving-api>=2.21,<2.22",
        "starlette>=0.40",
        "uvicorn>=0.30",
        # uvicorn takes these when present: a C HTTP parser and libuv's event loop cut the
        # server's own CPU per request (BENCHMARKS.md, "Serving").
        "httptools>=0.6",
        "uvloop>=0.19; sys_platform != 'win32'",
        # keraslm-evaluate's BLEU and chrF for translation models: the reference implementation, with its signature.
        "sacrebleu>=2.4,<3",
        # keraslm.tflite_runtime: LiteRT's interpreter for --format=tflite exports (TF's own
        # tf.lite.Interpreter is deprecated in its favour; 2.3.0 works with TF 2.21's numpy).
        "ai-edge-litert>=2.3,<3",
    ],
    # selenium drives Debian's chromium (scripts/test.sh installs it) in the playground page's test.
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5", "selenium>=4.20"]},
    entry_points={
        "console_scripts": [
            "keraslm-train=keraslm.cli.train:run",
            "keraslm-export=keraslm.cli.export:run",
            "keraslm-generate=keraslm.cli.generate:run",
            "keraslm-evaluate=keraslm.cli.evaluate:run",
            "keraslm-classify=keraslm.cli.classify:run",
            "keraslm-translate=keraslm.cli.translate:run",
            "keraslm-serve=keraslm.cli.serve:run",
        ]
    },
)
