"""`m2kd serve MODEL`."""

from __future__ import annotations

from pathlib import Path

import click

from .classifier_option import classifier_override_option


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto",
              show_default=True, help="auto: onnxruntime for .onnx files, torch for bundles.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--max-images", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images per request.")
@click.option("--max-body-mb", default=20.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True))
@click.option("--max-pixels", default=4096 * 4096, show_default=True,
              type=click.IntRange(min=1), help="Refuse (413) images declaring more pixels, "
              "before decoding them.")
@click.option("--token", envvar="M2KD_TOKEN", help="Bearer token required on every route "
              "but the health checks (or M2KD_TOKEN).")
@click.option("--watch/--no-watch", default=True, show_default=True,
              help="Reload when the model file is replaced.")
@classifier_override_option
def serve(model, host, port, backend, device, max_batch, max_wait_ms, max_images, max_body_mb,
          max_pixels, token, watch, classifier):
    """Serve predictions over HTTP with micro-batching and hot reload."""
    import logging

    import uvicorn

    from .model_holder import ModelHolder
    from .prometheus import ServerMetrics
    from .server import ServeSettings, create_app

    if backend == "auto":
        backend = "onnxruntime" if model.suffix.lower() == ".onnx" else "torch"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    metrics = ServerMetrics()
    holder = ModelHolder(model, backend, device, metrics, classifier)
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_images=max_images,
                             max_body_mb=max_body_mb, max_pixels=max_pixels, token=token,
                             watch=watch)
    click.echo(f"serving {model} ({holder.current.steps} steps, {backend} on "
               f"{holder.current.device}, classifier {holder.current.classifier}) at "
               f"http://{host}:{port}")
    uvicorn.run(create_app(holder, settings, metrics), host=host, port=port, log_level="warning")
