"""Image bytes -> RGB PIL images, as the reference loads them, with the limits that keep a hostile image harmless.

What the reference does, and so what we do (vLLM `ImageMediaIO._load_bytes_pillow` + `convert_image_mode`;
transformers' `load_image` / `convert_to_rgb` agree):
- EXIF orientation is applied (`ImageOps.exif_transpose`) before anything else.
- Transparency (RGBA, LA, PA, P or L or RGB with a tRNS colour) is composited onto white: the image is taken
  to RGBA and pasted on a white RGB canvas through its alpha channel.
- Every other mode (L, P, CMYK, YCbCr, I;16, I, F, 1) goes through Pillow's `convert("RGB")`; 16-bit and
  32-bit grey is clipped to 0..255 by that conversion, as in the reference.
- Only the first frame of an animated GIF or WebP is used.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ClientError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?),(?P<data>.*)$", re.DOTALL)
# NIM documents PNG and JPEG; the rest are common and safe in Pillow. MPO is how Pillow names the JPEG files
# many phones write (a JPEG with extra preview frames).
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP")
_SWAPS_SIDES = {5, 6, 7, 8}   # EXIF orientations that rotate by 90 degrees
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000   # decompression-bomb guard, checked before pixels are decoded


def _refuse(index: int, message: str, code: str) -> ClientError:
    return ClientError(f"image {index}: {message}", param="messages", code=code)


def data_url_bytes(url: str, *, index: int, limits: ImageLimits) -> bytes:
    match = _DATA_URL.match(url)
    if not match or ";base64" not in match.group("params"):
        raise _refuse(index, "a data URL must look like data:image/png;base64,<data>", "invalid_image_url")
    data = match.group("data").strip()
    if len(data) * 3 // 4 > limits.max_bytes:
        raise _refuse(index, f"larger than {limits.max_bytes} bytes", "image_too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(index, "the data URL is not valid base64", "invalid_base64") from None


@dataclass
class OpenedImage:
    """An image whose header is read and checked; no pixel decoded yet."""

    image: Image.Image
    index: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) once EXIF orientation is applied: what tiling will see."""
        width, height = self.image.size
        return (height, width) if _orientation(self.image) in _SWAPS_SIDES else (width, height)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:   # a broken EXIF block is ignored, as exif_transpose's callers in the reference do
        return 1


def open_image(data: bytes, *, index: int, limits: ImageLimits = ImageLimits()) -> OpenedImage:
    """Read the header only (Image.open is lazy): format and pixel count are refused before any decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # our own limit applies below
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _refuse(index, f"too many pixels (more than {limits.max_pixels})", "image_too_many_pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise _refuse(index, "not a decodable image (not an image, or a format Pillow cannot identify)",
                      "invalid_image") from None
    if image.format not in ACCEPTED_FORMATS:
        raise _refuse(index, f"format {image.format} is not accepted (accepted: {', '.join(ACCEPTED_FORMATS)})",
                      "unsupported_image_format")
    width, height = image.size
    if width < 1 or height < 1:
        raise _refuse(index, f"empty image ({width}x{height})", "invalid_image")
    if width * height > limits.max_pixels:
        raise _refuse(index, f"{width}x{height} is {width * height} pixels, more than {limits.max_pixels}",
                      "image_too_many_pixels")
    return OpenedImage(image, index)


def to_rgb(image: Image.Image) -> Image.Image:
    """The reference's mode conversion: transparency composited onto white, everything else convert('RGB')."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def load_rgb(opened: OpenedImage) -> Image.Image:
    """Decode the pixels (first frame), apply EXIF orientation, convert to RGB."""
    try:
        opened.image.load()
        image = ImageOps.exif_transpose(opened.image) if _orientation(opened.image) != 1 else opened.image
        return to_rgb(image)
    except OSError as exc:
        # Pillow raises OSError('image file is truncated ...') or a decoder error for cut or corrupt data.
        code = "image_truncated" if "truncated" in str(exc) else "invalid_image"
        raise _refuse(opened.index, f"cannot decode the image ({exc})", code) from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise _refuse(opened.index, f"cannot decode the image ({exc})", "invalid_image") from None


def decode_image(data: bytes, *, index: int, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Encoded bytes -> RGB image. Every failure is a ClientError naming the image."""
    return load_rgb(open_image(data, index=index, limits=limits))
