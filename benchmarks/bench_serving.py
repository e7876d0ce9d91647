"""Serving cost: single-image requests to ``mlflow models serve`` against the in-process detector.

Trains a tiny metric-learning detector on the built-in synthetic set (in a
throwaway SQLite store), registers and promotes it, starts
``mlflow models serve -m models:/NAME@champion --env-manager local`` on a free
127.0.0.1 port, then sends ``--requests`` sequential one-image requests
(base64 PNG, the README's payload) and times each. The same payloads go
through the loaded pyfunc's ``predict`` in this process: the ratio is what
HTTP, JSON and the server add to a one-image prediction.

Run: ``python benchmarks/bench_serving.py --image-size 64 --requests 100``
(calls alternate between the two paths; the first ``--warmup`` of each are not timed). Prints the figures
and the ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402

from defectlab.methods.metric import MetricConfig  # noqa: E402
from defectlab.serving.detector import IMAGE_COLUMN, load_logged_detector  # noqa: E402
from defectlab.runner import run_training  # noqa: E402
from defectlab.tracking.registry import promote  # noqa: E402
from defectlab.data.synthetic import SyntheticSpec, generate_dataset  # noqa: E402

MODEL_NAME = "defectlab-metric-carpet"
CHAMPION_URI = f"models:/{MODEL_NAME}@champion"
SERVER_START_SECONDS = 300


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_json(url: str, body: bytes) -> dict:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def wait_until_serving(base_url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no answer at {base_url}/ping after {SERVER_START_SECONDS} s")


def request_body(encoded_image: str) -> bytes:
    """The README's payload: one base64 PNG in the ``image`` column."""
    return json.dumps({"dataframe_split": {"columns": [IMAGE_COLUMN], "data": [[encoded_image]]}}).encode()


def interleaved_timings(in_process, served, payloads: list, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds of ``in_process(payload)`` and ``served(payload)``, alternating, after ``warmup`` untimed pairs."""
    in_process_seconds, served_seconds = [], []
    for index, payload in enumerate(payloads):
        for call, seconds in ((in_process, in_process_seconds), (served, served_seconds)):
            start = time.perf_counter()
            call(payload)
            if index >= warmup:
                seconds.append(time.perf_counter() - start)
    return in_process_seconds, served_seconds


def summary(name: str, seconds: list[float]) -> dict:
    median_ms = 1000 * statistics.median(seconds)
    images_per_second = len(seconds) / sum(seconds)
    print(f"{name:<28} median {median_ms:8.2f} ms   {images_per_second:8.2f} images/s   ({len(seconds)} requests)")
    return {"median_ms": median_ms, "images_per_second": images_per_second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        os.chdir(folder)
        tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        os.environ["DEFECTLAB_CACHE"] = str(folder / "cache")
        mlflow.set_tracking_uri(tracking_uri)

        # A tiny detector, registered and promoted as a user would
        data_root = generate_dataset(
            folder / "data", SyntheticSpec(image_size=arguments.image_size, count_scale=0.25), ["carpet", "leather"]
        )
        run_training(MetricConfig(
            category="carpet", data_dir=str(data_root), image_size=arguments.image_size, epochs=1,
            batch_size=16, weights="none", register_as=MODEL_NAME,
        ))
        print(promote(MODEL_NAME).summary())

        image_paths = sorted(str(path) for path in (data_root / "carpet" / "test").rglob("*.png"))
        count = arguments.requests + arguments.warmup
        encoded_images = [
            base64.b64encode(Path(image_paths[index % len(image_paths)]).read_bytes()).decode("ascii")
            for index in range(count)
        ]

        pyfunc_model, _ = load_logged_detector(CHAMPION_URI)
        port = free_port()
        log_path = folder / "serve.log"
        environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", CHAMPION_URI,
                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                env=environment, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_serving(base_url, server, log_path)
            # Interleaved, one image at a time, so that a change in the machine's load
            # (shared CPUs) weighs on both paths alike.
            in_process_seconds, served_seconds = interleaved_timings(
                in_process=lambda image: pyfunc_model.predict(pd.DataFrame({IMAGE_COLUMN: [image]})),
                served=lambda image: post_json(f"{base_url}/invocations", request_body(image)),
                payloads=encoded_images, warmup=arguments.warmup,
            )
        finally:
            server.terminate()
            server.wait(timeout=30)

    in_process = summary("in-process pyfunc.predict", in_process_seconds)
    served = summary("served (HTTP, 1 image)", served_seconds)
    print(f"image size {arguments.image_size} px")
    print(f"served / in-process images/s: {served['images_per_second'] / in_process['images_per_second']:.2f}")
    print(f"served / in-process median latency: {served['median_ms'] / in_process['median_ms']:.2f}")


if __name__ == "__main__":
    main()
