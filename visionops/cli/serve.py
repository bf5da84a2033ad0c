"""`visionops serve`: start the KServe predictor, exactly as `python -m serving` does.

The command replaces itself with `python -m serving` (KServe reads its own flags from the process
arguments), so both entry points run the same server with the same flags; any flag of
`python -m serving --help` not listed here is passed through unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from visionops.errors import UsageError


def serve(
    ctx: typer.Context,
    model_dir: Annotated[
        Path | None,
        typer.Option("--model-dir", help="Model directory (model.onnx + metadata.json)."),
    ] = None,
    model_uri: Annotated[
        str | None,
        typer.Option("--model-uri", help="s3://bucket/prefix or models:/NAME@ALIAS."),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind HTTP and gRPC to.")
    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port", min=1, max=65535)] = 8080,
    grpc_port: Annotated[int, typer.Option("--grpc-port", min=1, max=65535)] = 8081,
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", help="Name in the URLs (default: VISIONOPS_MODEL_NAME)."),
    ] = None,
) -> None:
    """Serve the model over HTTP (KServe v1 and v2) and gRPC; see README "Serving".

    Binds to 127.0.0.1 unless --host says otherwise (0.0.0.0 in a container).
    """
    if model_dir is not None and model_uri is not None:
        raise UsageError("give --model-dir or --model-uri, not both")
    argv = ["--host", host, f"--http_port={http_port}", f"--grpc_port={grpc_port}"]
    if model_dir is not None:
        argv += ["--model-dir", str(model_dir)]
    if model_uri is not None:
        argv += ["--model-uri", model_uri]
    if model_name is not None:
        argv.append(f"--model_name={model_name}")
    argv += ctx.args
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "serving", *argv])
