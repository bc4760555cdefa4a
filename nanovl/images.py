"""Image sources -> RGB PIL images, with the limits that keep a hostile image from hurting the server."""
from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from .errors import ClientError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?),(?P<data>.*)$", re.DOTALL)
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000   # decompression-bomb guard, checked before pixels are decoded
    min_side: int = 1


def data_url_bytes(url: str, *, index: int, limits: ImageLimits) -> bytes:
    match = _DATA_URL.match(url)
    if not match or ";base64" not in match.group("params"):
        raise ClientError(f"image {index}: a data URL must look like data:image/png;base64,<data>",
                          param="messages", code="invalid_image_url")
    data = match.group("data").strip()
    if len(data) * 3 // 4 > limits.max_bytes:
        raise ClientError(f"image {index}: larger than {limits.max_bytes} bytes", param="messages",
                          code="image_too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(f"image {index}: the data URL is not valid base64", param="messages",
                          code="invalid_base64") from None


def source_bytes(url: str, *, index: int, limits: ImageLimits) -> bytes:
    if url.startswith("data:"):
        return data_url_bytes(url, index=index, limits=limits)
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme in ("http", "https"):
        raise ClientError(f"image {index}: remote image URLs are not fetched by this build; send a base64 "
                          "data URL", param="messages", code="unsupported_image_url")
    raise ClientError(f"image {index}: unsupported URL scheme {scheme!r}", param="messages",
                      code="invalid_image_url")


def decode_image(data: bytes, *, index: int, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Encoded bytes -> RGB image. Every failure is a ClientError naming the image."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ACCEPTED_FORMATS:
            raise ClientError(f"image {index}: format {image.format} is not accepted "
                              f"(accepted: {', '.join(ACCEPTED_FORMATS)})", param="messages",
                              code="unsupported_image_format")
        if image.width * image.height > limits.max_pixels:
            raise ClientError(f"image {index}: {image.width}x{image.height} exceeds {limits.max_pixels} pixels",
                              param="messages", code="image_too_large")
        image.load()
        return image.convert("RGB")
    except ClientError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ClientError(f"image {index}: not a decodable image", param="messages",
                          code="invalid_image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ClientError(f"image {index}: cannot decode image ({exc})", param="messages",
                          code="invalid_image") from None
