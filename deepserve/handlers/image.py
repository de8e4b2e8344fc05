"""Images: PNG/JPEG bytes <-> (C, H, W) float32 in [0, 1], and the image input codec.

Decoding converts to the model's channels (grayscale "L" or "RGB") and resizes to its size;
normalisation (mean/std) is inside the graph, so the codec only scales to [0, 1].

Accepted forms: KServe v2 ``pixels`` FP32 [-1, C, H, W] or ``image`` BYTES [-1, 1] (encoded files,
one per row; [-1] too); a body of image bytes (TorchServe ``curl -T cat.png``); base64 text;
JSON ``{"pixels": ...}`` / ``{"image": b64 | [b64, ...]}``; a list of base64 strings or a nested
pixel list.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np

from deepserve.handlers.base import InvalidInputError, Tensors
from deepserve.handlers.codec import InputCodec, parse_json
from deepserve.handlers.tensors import bytes_items, check_tensor
from deepserve.store import ImagePreprocessing, TensorSpec

# [-1, 1], one file per row, as Triton writes a batched string input (dims [1]): with a bare [-1],
# tools that strip the batch dim (perf_analyzer) are left with no shape and refuse the model.
# Optional: a request sends either this or ``pixels``. [-1] (a flat list of files) is accepted too.
IMAGE_INPUT = TensorSpec(name="image", datatype="BYTES", shape=[-1, 1], optional=True)
# A few KB of PNG can declare a gigapixel image (a decompression bomb); decoding one would take
# seconds and gigabytes before the resize to the model's size. 4096 x 4096 covers real photos.
MAX_IMAGE_PIXELS = 4096 * 4096
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")


def decode_image(data: bytes, pre: ImagePreprocessing, *, name: str = "image") -> np.ndarray:
    """(C, H, W) float32 in [0, 1] at the model's size and channel count."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:  # reads the header only: size is known, pixels are not
            _check_pixels(name, *opened.size)
            img = opened.convert("L" if pre.channels == 1 else "RGB")
        if img.size != (pre.width, pre.height):
            img = img.resize((pre.width, pre.height), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.float32) / 255.0
    except Image.DecompressionBombError as exc:  # over PIL's own limit, raised by Image.open
        raise InvalidInputError(f"input {name!r}: {exc}; the limit is {MAX_IMAGE_PIXELS} pixels") from exc
    except UnidentifiedImageError as exc:  # its message names the in-memory file object: not useful
        msg = f"input {name!r}: cannot decode {len(data)} bytes: not a PNG or JPEG image"
        raise InvalidInputError(msg) from exc
    except (OSError, ValueError) as exc:
        msg = f"input {name!r}: cannot decode {len(data)} bytes as PNG/JPEG ({exc})"
        raise InvalidInputError(msg) from exc
    return array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)


def _check_pixels(name: str, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidInputError(
            f"input {name!r}: a {width}x{height} image is over the {MAX_IMAGE_PIXELS}-pixel limit; "
            "resize it before sending (the model takes far fewer)"
        )


def encode_png(image: np.ndarray) -> bytes:
    """(C, H, W) in [0, 1], C = 1 or 3 -> PNG bytes."""
    from PIL import Image

    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    hwc = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, format="PNG")
    return buffer.getvalue()


def b64decode(name: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        msg = f"input {name!r}: a string must be base64-encoded image bytes ({exc})"
        raise InvalidInputError(msg) from exc


class ImageCodec(InputCodec):
    def __init__(self, graph_inputs: list[TensorSpec], pre: ImagePreprocessing) -> None:
        super().__init__(graph_inputs)
        self.pre = pre
        self.pixels = graph_inputs[0]

    @property
    def extra_inputs(self) -> list[TensorSpec]:
        return [IMAGE_INPUT]

    def decode_extra(self, tensors: Tensors) -> Tensors:
        return self.decode_files(bytes_items("image", tensors["image"]))

    def decode_files(self, files: list[bytes]) -> Tensors:
        return {self.pixels.name: np.stack([decode_image(f, self.pre) for f in files])}  # (n, C, H, W)

    def from_pixels(self, value: Any) -> Tensors:
        try:
            array = np.asarray(value, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"input 'pixels' must be a nested list of numbers: {exc}") from exc
        if array.ndim == 3:
            array = array[None]
        return {self.pixels.name: check_tensor(self.pixels, array)}

    def from_payload(self, body: Any, parameters: dict[str, Any]) -> Tensors:
        if isinstance(body, bytes | bytearray) and bytes(body[:4]).startswith(_MAGIC):
            return self.decode_files([bytes(body)])
        body = parse_json(body)
        if isinstance(body, dict):
            if "pixels" in body:
                return self.from_pixels(body["pixels"])
            key = next((k for k in ("image", "data", "b64") if k in body), None)
            if key is None:
                raise InvalidInputError("JSON body needs 'pixels' (nested list) or 'image' (base64)")
            body = body[key]
        if isinstance(body, str):
            return self.decode_files([b64decode("image", body)])
        if isinstance(body, bytes | bytearray):
            return self.decode_files([bytes(body)])
        if isinstance(body, list) and body and all(isinstance(b, str) for b in body):
            return self.decode_files([b64decode("image", b) for b in body])
        if isinstance(body, list):
            return self.from_pixels(body)
        kind = type(body).__name__
        raise InvalidInputError(f"cannot read an image from a {kind} body; send PNG/JPEG bytes")
