"""Load on `m2kd serve` over loopback: throughput, p50/p99 latency and errors for
max-batch 1 against max-batch 32, then a run during which `m2kd add-classes`
replaces the served bundle (failed requests, time until the new classes are served),
then a hostile mix (pixel bombs, oversized chunked bodies, bad steps, nested JSON,
mixed with valid requests): requests served, 4xx by code, 5xx (must be 0) and the
server's peak resident memory.

Bounded: N clients for T seconds per phase, 127.0.0.1 only.
Usage: python benchmarks/serve_load.py [--clients 8] [--seconds 10] [--device cpu]
       [--phases batch,reload,hostile]
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import itertools
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
sys.path.insert(0, str(ROOT))
from tests.hostile import png_bomb  # noqa: E402

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


def hostile_requests(max_body_mb: float):
    """(name, httpx.post kwargs) in a fixed rotation; a third of them are valid."""
    ok = png()
    bomb = png_bomb(9000, 9000)  # 0.2 MB, 243 MB if decoded
    chunk = b"x" * 2**20

    def oversized():  # a fresh generator per request: chunked, no content-length
        return (chunk for _ in range(int(max_body_mb) + 5))

    b64 = base64.b64encode(ok).decode()
    return itertools.cycle([
        ("valid", lambda: {"files": [("files", ("a.png", ok))]}),
        ("pixel bomb", lambda: {"files": [("files", ("bomb.png", bomb))]}),
        ("chunked json over limit", lambda: {"content": oversized(),
                                             "headers": {"content-type": "application/json"}}),
        ("valid json step 1", lambda: {"json": {"images": [b64], "step": 1}}),
        ("step 0", lambda: {"json": {"images": [b64], "step": 0}}),
        ("step 2.5", lambda: {"json": {"images": [b64], "step": 2.5}}),
        ("step true", lambda: {"json": {"images": [b64], "step": True}}),
        ("nested json", lambda: {"content": b"[" * 50_000 + b"]" * 50_000,
                                 "headers": {"content-type": "application/json"}}),
        ("valid", lambda: {"files": [("files", ("a.png", ok))]}),
    ])


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hostile_run(clients: int, seconds: float, device: str) -> dict:
    proc, url = start_server(GOLDEN, 32, device)
    statuses, lock = collections.Counter(), threading.Lock()
    rotation, stop = hostile_requests(20.0), time.perf_counter() + seconds

    def client():
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.perf_counter() < stop:
                with lock:
                    _, kwargs = next(rotation)
                try:
                    r = c.post("/v1/predict", **kwargs())
                    key = (r.status_code, r.json().get("error", {}).get("code", "ok"))
                except (httpx.HTTPError, ValueError) as e:
                    key = ("transport", e.__class__.__name__)
                with lock:
                    statuses[key] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alive = proc.poll() is None and httpx.get(f"{url}/healthz").status_code == 200
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    return {"statuses": statuses, "peak_rss_mb": rss, "alive": alive}


def print_hostile(r: dict) -> None:
    statuses = r["statuses"]
    served = sum(n for (status, _), n in statuses.items() if status == 200)
    fours = {code: n for (status, code), n in statuses.items()
             if isinstance(status, int) and 400 <= status < 500}
    fives = sum(n for (status, _), n in statuses.items()
                if isinstance(status, int) and status >= 500)
    other = {k: n for k, n in statuses.items() if not isinstance(k[0], int)}
    print(f"hostile mix: {sum(statuses.values())} requests, served {served}, 4xx "
          f"{sum(fours.values())} ({', '.join(f'{c} {n}' for c, n in sorted(fours.items()))}), "
          f"5xx {fives}, transport errors {sum(other.values())}; server peak RSS "
          f"{r['peak_rss_mb']:.0f} MB; alive after: {r['alive']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--phases", default="batch,reload,hostile")
    args = p.parse_args()
    phases = args.phases.split(",")
    if "hostile" in phases:
        print_hostile(hostile_run(args.clients, args.seconds, args.device))
    if "batch" not in phases or "reload" not in phases:
        return
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
