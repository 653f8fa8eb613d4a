"""`m2kd serve`: routes, bad input, micro-batching, hot reload under load.

A real uvicorn server on 127.0.0.1 (a free port), driven by httpx from threads.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from m2kd.runtime.bundle import save_bundle
from m2kd.runtime.model_holder import ModelHolder
from m2kd.runtime.prometheus import ServerMetrics
from m2kd.runtime.server import ServeSettings, create_app

from tests.hostile import png_bomb

GOLDEN = Path(__file__).parent / "data" / "golden-v1.safetensors"


def png(value: int = 128, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size, value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class Server:
    def __init__(self, path: Path, **settings):
        self.holder = ModelHolder(path, "torch", "cpu", ServerMetrics())
        app = create_app(self.holder, ServeSettings(**settings))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture()
def bundle_file(tmp_path):
    path = tmp_path / "served.safetensors"
    path.write_bytes(GOLDEN.read_bytes())
    return path


@pytest.fixture(autouse=True)
def fast_watch(monkeypatch):
    monkeypatch.setenv("M2KD_WATCH_SECONDS", "0.05")


def test_routes(bundle_file):
    with Server(bundle_file) as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json()["status"] == "ready"
        info = c.get("/v1/model").json()
        assert info["steps"] == 2 and info["classes"] == ["0", "1", "2", "3"]
        assert info["classifier"] == "head"  # a v1 bundle
        files = [("files", ("a.png", png(10))), ("files", ("b.png", png(200)))]
        r = c.post("/v1/predict", files=files, data={"top_k": "2"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [p["image"] for p in body["predictions"]] == ["a.png", "b.png"]
        assert len(body["predictions"][0]["top"]) == 2
        assert body["checksum"] == info["checksum"] and body["step"] == 2
        r = c.post("/v1/predict", json={"images": [base64.b64encode(png()).decode()],
                                         "step": 1})
        assert r.status_code == 200 and r.json()["step"] == 1
        assert {t["label"] for t in r.json()["predictions"][0]["top"]} <= {"0", "1"}
        metrics = c.get("/metrics").text
        assert 'm2kd_requests_total{route="/v1/predict",status="200"} 2.0' in metrics
        assert "m2kd_request_latency_seconds_bucket" in metrics
        assert "/v1/predict" in c.get("/openapi.json").json()["paths"]


BAD = {
    "not an image": (dict(files=[("files", ("x.png", b"hello"))]), 400, "bad_image"),
    "truncated image": (dict(files=[("files", ("t.png", png()[:30]))]), 400, "bad_image"),
    "empty body": (dict(content=b"", headers={"content-type": "application/json"}), 400,
                   "bad_json"),
    "no images": (dict(json={"images": []}), 400, "no_images"),
    "bad base64": (dict(json={"images": ["***"]}), 400, "bad_json"),
    "wrong content type": (dict(content=b"abc", headers={"content-type": "text/plain"}), 415,
                           "unsupported_media_type"),
    "too many images": (dict(files=[("files", (f"{i}.png", png())) for i in range(5)]), 413,
                        "too_many_images"),
    "body too large": (dict(content=b"x" * 3_000_000,
                            headers={"content-type": "application/json"}), 413,
                       "body_too_large"),
    **{f"step {v!r}": (dict(json={"images": [base64.b64encode(png()).decode()], "step": v}),
                       422, "bad_parameter") for v in (7, 0, -1, 2.5, True, "1", [1])},
    **{f"form step {v!r}": (dict(files=[("files", ("a.png", png()))], data={"step": v}), 422,
                            "bad_parameter") for v in ("0", "2.5", "true", "3", "1e0")},
    "top_k true": (dict(json={"images": [base64.b64encode(png()).decode()], "top_k": True}),
                   422, "bad_parameter"),
    "deeply nested json": (dict(content=b"[" * 100_000 + b"]" * 100_000,
                                headers={"content-type": "application/json"}), 400, "bad_json"),
    "pixel bomb": (dict(files=[("files", ("bomb.png", png_bomb(5000, 5000)))]), 413,
                   "image_too_large"),
    "chunked json over the limit": (dict(content=iter([b"x" * 1_000_000] * 3),
                                         headers={"content-type": "application/json"}), 413,
                                    "body_too_large"),
    "chunked multipart over the limit": (
        dict(content=iter([b"--b\r\nContent-Disposition: form-data; name=files; "
                           b"filename=a.png\r\n\r\n"] + [b"x" * 1_000_000] * 3),
             headers={"content-type": "multipart/form-data; boundary=b"}), 413,
        "body_too_large"),
    "malformed multipart": (dict(content=b"--b\r\nX-Part: 1\r\n\r\ndata\r\n--b--\r\n",
                                 headers={"content-type": "multipart/form-data; boundary=b"}),
                            400, "bad_multipart"),
    "over 1000 parts": (dict(files=[("files", (f"{i}.png", b"x")) for i in range(1001)]), 400,
                        "bad_multipart"),
}


def test_bad_input_gets_a_4xx_json_error_and_the_server_keeps_running(bundle_file):
    with Server(bundle_file, max_images=4, max_body_mb=2, max_pixels=4096 * 4096) as s, \
            httpx.Client(base_url=s.url) as c:
        for case, (kwargs, status, code) in BAD.items():
            r = c.post("/v1/predict", **kwargs)
            assert r.status_code == status, (case, r.text)
            assert r.json()["error"]["code"] == code, case
        assert c.post("/v1/predict", files=[("files", ("ok.png", png()))]).status_code == 200
        assert c.post("/v1/predict", files=[("files", ("ok.png", png()))],
                      data={"step": "1"}).json()["step"] == 1


def test_unknown_route_and_wrong_method_use_the_error_shape(bundle_file):
    with Server(bundle_file) as s, httpx.Client(base_url=s.url) as c:
        for r, status, code in ((c.get("/nope"), 404, "not_found"),
                                (c.get("/v1/predict"), 405, "method_not_allowed")):
            assert r.status_code == status
            assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
        for i in range(20):
            c.get(f"/probe-{i}")
        metrics = c.get("/metrics").text
        assert 'route="other",status="404"} 21.0' in metrics and "probe-" not in metrics


def test_token_is_required_except_for_health(bundle_file):
    with Server(bundle_file, token="s3cret") as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = c.get("/v1/model", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def _batch_sizes(metrics: str) -> tuple[float, float]:
    total = float(re.search(r"^m2kd_batch_size_sum (\S+)", metrics, re.M).group(1))
    count = float(re.search(r"^m2kd_batch_size_count (\S+)", metrics, re.M).group(1))
    return total, count


def test_concurrent_requests_are_batched(bundle_file):
    with Server(bundle_file, max_batch=32, max_wait_ms=100) as s:
        def one(_):
            with httpx.Client(base_url=s.url) as c:
                return c.post("/v1/predict", files=[("files", ("a.png", png()))]).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(one, range(16))) == {200}
        total, count = _batch_sizes(httpx.get(f"{s.url}/metrics").text)
        assert total == 16 and count < 16  # some batches held more than one request


def _hammer(url: str, stop: threading.Event, statuses: list, checksums: set):
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            r = c.post("/v1/predict", files=[("files", ("a.png", png()))])
            statuses.append(r.status_code)
            if r.status_code == 200:
                checksums.add(r.json()["checksum"])


def test_reload_under_concurrent_requests_loses_none(bundle_file, three_step_bundle):
    with Server(bundle_file) as s:
        old = httpx.get(f"{s.url}/v1/model").json()["checksum"]
        stop, statuses, checksums = threading.Event(), [], set()
        threads = [threading.Thread(target=_hammer, args=(s.url, stop, statuses, checksums))
                   for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        new = save_bundle(three_step_bundle[-1], bundle_file)  # atomic replace, like add-classes
        deadline = time.time() + 20
        while httpx.get(f"{s.url}/v1/model").json()["checksum"] != new:
            assert time.time() < deadline, "the new bundle was never served"
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert statuses and set(statuses) == {200}
        assert checksums == {old, new}
        assert 'm2kd_model_reloads_total{result="ok"} 1.0' in httpx.get(f"{s.url}/metrics").text


def test_broken_replacement_keeps_the_old_model_serving(bundle_file):
    from m2kd.runtime.atomic import atomic_write_bytes

    with Server(bundle_file) as s, httpx.Client(base_url=s.url) as c:
        old = c.get("/v1/model").json()["checksum"]
        atomic_write_bytes(bundle_file, b"not a bundle at all")
        deadline = time.time() + 10
        while c.get("/v1/model").json()["last_reload_error"] is None:
            assert time.time() < deadline
            time.sleep(0.05)
        r = c.post("/v1/predict", files=[("files", ("a.png", png()))])
        assert r.status_code == 200 and r.json()["checksum"] == old
        assert c.post("/v1/reload").status_code == 409
        bundle_file.write_bytes(GOLDEN.read_bytes())
        assert c.post("/v1/reload").json()["reloaded"] is True


def test_a_served_bundle_can_classify_another_way(tmp_path):
    import torch

    from m2kd.runtime.api import Runtime
    from m2kd.runtime.bundle import load_bundle
    from m2kd.runtime.errors import ConfigError
    from m2kd.runtime.images import normalise

    path = tmp_path / "v2.safetensors"
    path.write_bytes((GOLDEN.parent / "golden-v2.safetensors").read_bytes())
    # its own (golden-v2 was written before the covariance prior; it classifies without it)
    assert ModelHolder(path, "torch", "cpu").current.classifier == "fecam-base (no cov_prior)"
    holder = ModelHolder(path, "torch", "cpu", classifier="pseudo")
    assert holder.current.classifier == "pseudo"
    assert holder.current.checksum == load_bundle(path).checksum()  # the file's
    spec = holder.current.spec
    pixels = torch.rand(6, spec.channels, spec.height, spec.width,
                        generator=torch.Generator().manual_seed(0))
    want = Runtime.load(path, "cpu").using_classifier("pseudo").predict(
        normalise(pixels, spec), top_k=2)
    for _ in range(2):  # as loaded, and after a reload
        got = holder.current.predict(pixels, 2, None)
        assert [p.labels for p in got] == [p.labels for p in want]
        assert holder.reload()
    with pytest.raises(ConfigError, match="applies to bundles"):
        ModelHolder(path, "onnxruntime", "cpu", classifier="pseudo")
