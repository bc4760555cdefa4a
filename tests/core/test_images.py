import io

import numpy as np
import pytest
from PIL import Image

from nanovl.core.errors import ClientError
from nanovl.core.images import ImageLimits, data_url_bytes, decode_image, open_image


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def reference_rgb(image: Image.Image) -> np.ndarray:
    """vLLM's rule, spelled out with numpy: alpha blended onto white, rounded as Pillow's paste does."""
    rgba = np.asarray(image.convert("RGBA")).astype(np.int64)
    alpha = rgba[..., 3:]
    return ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_accepted_formats_decode_to_rgb(fmt):
    image = decode_image(encode(Image.new("RGB", (40, 30), (10, 200, 30)), fmt), index=0)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_transparency_is_composited_on_white():
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    got = np.asarray(decode_image(encode(rgba), index=0)).astype(int)
    assert np.abs(got - reference_rgb(rgba)).max() <= 1
    assert np.asarray(decode_image(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0))), index=0)).min() == 255
    la = Image.new("LA", (4, 4), (0, 0))
    assert np.asarray(decode_image(encode(la), index=0)).min() == 255


def test_palette_with_transparent_index_is_white_where_transparent():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    assert np.asarray(decode_image(encode(image, transparency=1), index=0)).tolist()[0][0] == [255, 255, 255]


@pytest.mark.parametrize("mode, value", [("L", 77), ("CMYK", (0, 0, 0, 0)), ("I;16", 200)])
def test_other_modes_use_pillow_convert(mode, value):
    image = Image.new(mode, (8, 8), value)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    got = decode_image(encode(image, fmt), index=0)
    want = Image.open(io.BytesIO(encode(image, fmt))).convert("RGB")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))   # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90 clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    opened = open_image(data, index=0)
    assert opened.size == (20, 40)
    got = np.asarray(decode_image(data, index=0))
    assert got.shape == (40, 20, 3) and got[2, 10, 2] > 200   # blue is now on top


def test_truncated_file_is_a_client_error():
    data = encode(Image.effect_noise((300, 300), 60).convert("RGB"), "JPEG")
    with pytest.raises(ClientError, match="image 2: cannot decode") as info:
        decode_image(data[: len(data) // 2], index=2)
    assert info.value.code == "image_truncated"


def test_too_many_pixels_refused_before_decoding():
    data = encode(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(ClientError, match="image 1: 4000x4000") as info:
        open_image(data, index=1, limits=ImageLimits(max_pixels=1_000_000))
    assert info.value.code == "image_too_many_pixels"


@pytest.mark.parametrize("data, code", [(b"hello", "invalid_image"), (encode(Image.new("RGB", (4, 4)), "TIFF"),
                                                                         "unsupported_image_format")])
def test_not_an_image_or_unsupported(data, code):
    with pytest.raises(ClientError) as info:
        decode_image(data, index=0)
    assert info.value.code == code and "image 0" in info.value.message


@pytest.mark.parametrize("url, code", [("data:image/png;base64,@@", "invalid_base64"),
                                       ("data:image/png,abc", "invalid_image_url"),
                                       ("data:image/png;base64," + "A" * 400, "image_too_large")])
def test_bad_data_urls(url, code):
    with pytest.raises(ClientError) as info:
        data_url_bytes(url, index=3, limits=ImageLimits(max_bytes=100))
    assert info.value.code == code and info.value.message.startswith("image 3:")
