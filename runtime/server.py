"""`m2kd serve`: an HTTP inference server (FastAPI on uvicorn).

Routes: POST /v1/predict, GET /v1/model, POST /v1/reload, GET /healthz,
GET /readyz, GET /metrics. Errors are JSON `{"error": {"code", "message"}}` with
a 4xx status; the server keeps running.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import json
import re
import time
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batching import MicroBatcher
from .errors import M2KDError
from .images import MAX_PIXELS, ImageTooLarge, decode_bounded
from .model_holder import ModelHolder, watch_interval
from .prometheus import CONTENT_TYPE, ServerMetrics


@dataclass
class ServeSettings:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_images: int = 64
    max_body_mb: float = 20.0
    max_pixels: int = MAX_PIXELS
    token: str | None = None
    watch: bool = True


HTTP_ERROR_CODES = {400: "bad_multipart", 404: "not_found", 405: "method_not_allowed"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def decode_image(data: bytes, name: str, spec, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(400, "empty_image", f"{name}: empty")
    try:
        return decode_bounded(io.BytesIO(data), spec, max_pixels)
    except ImageTooLarge as e:
        raise ApiError(413, "image_too_large", f"{name}: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        raise ApiError(400, "bad_image", f"{name}: not a readable image") from None


def _strict_int(value, name: str, form: bool) -> int | None:
    """An integer as JSON sends it, or a decimal string as a form field sends it; a bool,
    a float or any other text is refused (422), never rounded or read as true = 1."""
    if value is None or (form and value == ""):
        return None
    if form and isinstance(value, str) and re.fullmatch(r"\+?[0-9]{1,9}", value.strip()):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ApiError(422, "bad_parameter", f"{name} must be an integer, got {value!r}")


async def _read_images(request: Request, max_bytes: int
                       ) -> tuple[list[tuple[str, bytes]], int, int | None]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_part_size=max_bytes)
        files = [(f.filename or key, await f.read()) for key, f in form.multi_items()
                 if hasattr(f, "read")]
        top_k, step, is_form = form.get("top_k", "5"), form.get("step"), True
    elif ctype == "application/json":
        try:
            body = json.loads(await request.body() or b"null")
            encoded = body["images"]
            files = [(f"images[{i}]", base64.b64decode(s, validate=True))
                     for i, s in enumerate(encoded)]
            top_k, step, is_form = body.get("top_k", 5), body.get("step"), False
        except (ValueError, KeyError, TypeError, binascii.Error, AttributeError,
                RecursionError):
            raise ApiError(400, "bad_json", 'expected {"images": [base64, ...], '
                                            '"top_k"?: int, "step"?: int}') from None
    else:
        raise ApiError(415, "unsupported_media_type",
                       "send multipart/form-data files or application/json with base64 images")
    top_k, step = _strict_int(top_k, "top_k", is_form), _strict_int(step, "step", is_form)
    if top_k is None or top_k < 1:
        raise ApiError(422, "bad_parameter", "top_k must be an integer >= 1")
    return files, top_k, step


class BodyLimit:
    """Pure ASGI middleware: reads the whole body first (declared or chunked) and answers
    413 once it passes the limit, so the app never sees a partial or oversized body."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await self._reject(scope, receive, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # disconnect, as the server reports it
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        mb = self.max_bytes / 2**20
        response = _error(413, "body_too_large", f"request body is over {mb:g} MB")
        await response(scope, receive, send)


def create_app(holder: ModelHolder, settings: ServeSettings,
               metrics: ServerMetrics | None = None) -> FastAPI:
    metrics = metrics or holder.metrics or ServerMetrics()
    batcher = MicroBatcher(holder, metrics, settings.max_batch, settings.max_wait_ms)
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        watcher = asyncio.get_running_loop().create_task(_watch()) if settings.watch else None
        state["ready"] = True
        yield
        state["ready"] = False
        if watcher:
            watcher.cancel()
        await batcher.stop()

    async def _watch():
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(watch_interval())
            if holder.changed():
                await loop.run_in_executor(None, holder.reload)

    app = FastAPI(title="m2kd", description="Class-incremental image classifier.",
                  lifespan=lifespan)

    known_routes: set[str] = set()

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        public = request.url.path in ("/healthz", "/readyz")
        # unknown paths share one label, so probing random URLs cannot grow the metrics
        route = request.url.path if request.url.path in known_routes else "other"
        if settings.token and not public:
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {settings.token}".encode()):
                response = _error(401, "unauthorized", "missing or wrong bearer token")
                metrics.requests.labels(route=route, status="401").inc()
                return response
        try:
            response = await call_next(request)
        except ApiError as e:
            response = _error(e.status, e.code, e.message)
        metrics.requests.labels(route=route, status=str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - started)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return _error(e.status, e.code, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        """404, 405 and malformed multipart bodies, in the same shape as every error."""
        code = HTTP_ERROR_CODES.get(e.status_code, "bad_request")
        return _error(e.status_code, code, str(e.detail))

    @app.post("/v1/predict", openapi_extra={"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "top_k": {"type": "integer"}, "step": {"type": "integer"}}}},
        "application/json": {"schema": {"type": "object", "required": ["images"],
                                        "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
            "top_k": {"type": "integer"}, "step": {"type": "integer"}}}}}}})
    async def predict(request: Request):
        """Top-k classes for one or many images (multipart files or base64 JSON)."""
        files, top_k, step = await _read_images(request, int(settings.max_body_mb * 2**20))
        if not files:
            raise ApiError(400, "no_images", "the request holds no images")
        if len(files) > settings.max_images:
            raise ApiError(413, "too_many_images",
                           f"{len(files)} images; at most {settings.max_images} per request")
        current = holder.current
        if step is not None and not 1 <= step <= current.steps:
            raise ApiError(422, "bad_parameter",
                           f"step {step} does not exist; the model has steps 1..{current.steps}")
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(None, lambda: torch.stack(
            [decode_image(d, n, current.spec, settings.max_pixels) for n, d in files]))
        try:
            predictions, model = await batcher.submit(pixels, top_k, step)
        except M2KDError as e:
            raise ApiError(400, "bad_request", str(e)) from None
        return {"predictions": [{"image": name, **p.to_dict()}
                                for (name, _), p in zip(files, predictions)],
                "step": step or model.steps, "checksum": model.checksum,
                "backend": model.backend}

    @app.get("/v1/model")
    async def model_info():
        """What is being served, and the last reload failure if any."""
        m = holder.current
        return {"steps": m.steps, "classes": m.classes, "checksum": m.checksum,
                "backend": m.backend, "device": m.device, "classifier": m.classifier,
                "path": str(holder.path),
                "last_reload_error": holder.last_reload_error,
                "last_reload_at": holder.last_reload_at}

    @app.post("/v1/reload")
    async def reload():
        """Load and verify the file now; the old model keeps serving if it fails."""
        ok = await asyncio.get_running_loop().run_in_executor(None, holder.reload)
        if not ok:
            raise ApiError(409, "reload_failed", holder.last_reload_error or "reload failed")
        return {"reloaded": True, "checksum": holder.current.checksum,
                "steps": holder.current.steps}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not state["ready"]:
            return _error(503, "not_ready", "starting or stopping")
        return {"status": "ready", "checksum": holder.current.checksum}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    known_routes.update(route.path for route in app.routes)
    app.add_middleware(BodyLimit, max_bytes=int(settings.max_body_mb * 2**20))
    return app
