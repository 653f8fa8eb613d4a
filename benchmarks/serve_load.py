"""Load on `m2kd serve` over loopback: throughput, p50/p99 latency and errors for
max-batch 1 against max-batch 32, then a run during which `m2kd add-classes`
replaces the served bundle (failed requests, time until the new classes are served).

Bounded: N clients for T seconds per phase, 127.0.0.1 only.
Usage: python benchmarks/serve_load.py [--clients 8] [--seconds 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden-v1.safetensors"  # digits, classes 0-3
M2KD = [sys.executable, "-m", "m2kd.runtime.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.randint(0, 255, (8, 8), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def start_server(bundle: Path, max_batch: int, device: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(M2KD + ["serve", str(bundle), "--port", str(port), "--max-batch",
                                    str(max_batch), "--max-wait-ms", "5", "--device", device],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def load(url: str, clients: int, seconds: float, on_response=None, busy=lambda: False
         ) -> dict:
    """Clients post until `seconds` have passed and `busy()` is false."""
    started = time.perf_counter()
    stop = started + seconds
    latencies, errors, lock = [], [0], threading.Lock()
    image = png()

    def client():
        with httpx.Client(base_url=url, timeout=30) as c:
            while time.perf_counter() < stop or busy():
                t = time.perf_counter()
                try:
                    r = c.post("/v1/predict", files=[("files", ("a.png", image))])
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok, r = False, None
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - t)
                        if on_response:
                            on_response(r.json())
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
    return {"requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "errors": errors[0]}


def reload_run(workdir: Path, clients: int, seconds: float, device: str) -> dict:
    bundle = workdir / "served.safetensors"
    shutil.copy(GOLDEN, bundle)
    subprocess.run(M2KD + ["samples", "--dataset", "digits", "--split", "train", "--per-class",
                           "60", "--classes", "4,5", "--out", str(workdir / "new")],
                   check=True, capture_output=True)
    proc, url = start_server(bundle, 32, device)
    old = httpx.get(f"{url}/v1/model").json()["checksum"]
    times = {}

    def seen(body):
        if body["checksum"] != old and "served" not in times:
            times["served"] = time.perf_counter()

    def update():
        time.sleep(seconds / 4)
        times["start"] = time.perf_counter()
        subprocess.run(M2KD + ["add-classes", str(bundle), "--data", str(workdir / "new"),
                               "--epochs", "5", "--device", device, "--no-progress"],
                       check=True, capture_output=True)
        times["written"] = time.perf_counter()

    updater = threading.Thread(target=update)
    updater.start()
    try:
        # keep the load on until the new bundle has been answering for a second
        result = load(url, clients, seconds, on_response=seen,
                      busy=lambda: "served" not in times
                      or time.perf_counter() < times["served"] + 1.0)
    finally:
        updater.join()
        info = httpx.get(f"{url}/v1/model").json()
        proc.terminate()
        proc.wait()
    result["classes_after"] = len(info["classes"])
    result["add_classes_s"] = times["written"] - times["start"]
    result["start_to_served_s"] = times.get("served", float("nan")) - times["start"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    rows = {}
    for max_batch in (1, 32):
        proc, url = start_server(GOLDEN, max_batch, args.device)
        try:
            rows[f"max-batch {max_batch}"] = load(url, args.clients, args.seconds)
        finally:
            proc.terminate()
            proc.wait()
    with tempfile.TemporaryDirectory() as tmp:
        reload = reload_run(Path(tmp), args.clients, args.seconds, args.device)
    print(f"{args.clients} clients x {args.seconds:g} s, 1 image (8x8 PNG) per request, "
          f"digits bundle, device {args.device}")
    print(f"{'':28}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, r in list(rows.items()) + [("max-batch 32 + add-classes", reload)]:
        print(f"{name:28}{r['rps']:>8.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['errors']:>8}")
    print(f"add-classes ran {reload['add_classes_s']:.1f} s (process start to exit); the first "
          f"answer from the new bundle came {reload['start_to_served_s']:.1f} s after it "
          f"started; classes now "
          f"{reload['classes_after']}; failed requests during the update: {reload['errors']}")


if __name__ == "__main__":
    main()
