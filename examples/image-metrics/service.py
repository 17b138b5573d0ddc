#!/usr/bin/env python3
"""A real image-metrics service for Wellspring's reference DAG.

The reference DAG's `image-metrics` task POSTs each `channel_level` record to
`/v1/image-metrics`. This service opens the image at the record's `location` (a
`file://` URI or a plain path; TIFF through tifffile, PNG and others through Pillow),
and answers the `image_metrics` record with real pixel statistics:

- mean_intensity, std_intensity: over every pixel, in the image's own units;
- saturated_fraction: the fraction of pixels at the top of the image's range
  (the dtype's maximum for integer images, 1.0 or more for float images).

A request without a location is answered 400; an image that cannot be found or read is
answered 422 with `X-Function-Error: Handled` (the engine does not retry a 4xx: the same
request would fail again). With --root DIR, only images under DIR are read (403 for any
other). It listens on 127.0.0.1 unless told otherwise, and prints
`listening on http://HOST:PORT` once it does (--port 0 picks a free port).

    python service.py --port 9101 --root /data/plates
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import numpy as np

MAX_BODY = 1 << 20  # a channel_level record is a few hundred bytes


class ImageError(Exception):
    """An image that cannot be read, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def image_path(location: str, root: str | None) -> str:
    """The local path of `location` (file:// URI or path), checked against `root`."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ImageError(422, f"{location}: only local file:// locations are readable here")
        path = unquote(parsed.path)
    elif parsed.scheme == "":
        path = location
    else:
        raise ImageError(422, f"{location}: this service reads file:// locations, not {parsed.scheme}://")
    path = os.path.realpath(path)
    if root is not None and os.path.commonpath([root, path]) != root:
        raise ImageError(403, f"{location} is outside the service's --root")
    return path


def read_pixels(path: str) -> np.ndarray:
    """The image's pixels as an array (a multi-page TIFF: its first page)."""
    if not os.path.isfile(path):
        raise ImageError(422, f"{path}: no such file")
    try:
        if path.lower().endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                return tiff.pages[0].asarray()
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image)
    except ImageError:
        raise
    except Exception as error:  # a torn or foreign file: say what the reader said
        raise ImageError(422, f"{path}: cannot read the image: {error}") from error


def statistics(pixels: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation and saturated fraction of `pixels`."""
    if pixels.size == 0:
        raise ImageError(422, "the image has no pixels")
    values = pixels.astype(np.float64)
    if np.issubdtype(pixels.dtype, np.integer):
        top = np.iinfo(pixels.dtype).max
    elif pixels.dtype == np.bool_:
        top = True
    else:
        top = 1.0
    return {
        "mean_intensity": float(values.mean()),
        "std_intensity": float(values.std()),
        "saturated_fraction": float(np.count_nonzero(pixels >= top) / pixels.size),
    }


def image_metrics(record: dict, root: str | None) -> dict:
    """The image_metrics record of a channel_level record."""
    location = record.get("location")
    if not isinstance(location, str) or not location:
        raise ImageError(400, "expected a channel_level record with a location")
    answer = {name: record.get(name) for name in ("experiment_id", "plate_number", "well", "site", "channel")}
    answer.update(statistics(read_pixels(image_path(location, root))))
    return answer


class Handler(BaseHTTPRequestHandler):
    server_version = "wellspring-image-metrics/1"
    root: str | None = None

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/healthz":
            self.reply(200, {"status": "ok"})
        else:
            self.reply(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/image-metrics":
            self.reply(404, {"error": f"no route {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.reply(413, {"error": f"the body must be at most {MAX_BODY} bytes"})
            return
        try:
            record = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            self.reply(400, {"error": "the body is not JSON"})
            return
        if not isinstance(record, dict):
            self.reply(400, {"error": "expected a channel_level record (a JSON object)"})
            return
        try:
            self.reply(200, image_metrics(record, self.root))
        except ImageError as error:
            self.reply(error.status, {"error": str(error)}, function_error=error.status == 422)

    def reply(self, status: int, body: dict, function_error: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if function_error:
            self.send_header("X-Function-Error", "Handled")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if os.environ.get("IMAGE_METRICS_LOG"):
            super().log_message(format, *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=9101, help="port (default 9101, the reference DAG's; 0: any free one)")
    parser.add_argument("--root", help="read only images under this folder")
    args = parser.parse_args(argv)
    Handler.root = os.path.realpath(args.root) if args.root else None
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
