"""Image type sniffing, header inspection and decoding.

The type is identified from the leading bytes (never from a file name) and the declared
size is read from the header before any pixel is decoded, so decompression bombs are
rejected cheaply. Decoding uses ``cv2.imdecode(..., IMREAD_COLOR)``, the call behind
Ultralytics' image loader: EXIF orientation is applied, and grayscale, alpha, palette
and 16-bit images all come out as 8-bit BGR. `decode_image_at_least` lets libjpeg decode a
large JPEG at 1/2, 1/4 or 1/8 of its size when the model needs no more (camera frames).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageTooLarge, InvalidImage, UnsupportedImageType

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
"""File suffixes of the formats the engine accepts, which OpenCV decodes and Ultralytics trains on (lower case)."""

DEFAULT_MAX_PIXELS = 50_000_000
"""Default decode limit: 50 megapixels (e.g. 8160x6120), about 150 MB once decoded to BGR."""

_JPEG_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length field

_UNSUPPORTED_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"8BPS", "Photoshop PSD"),
    (b"%PDF", "PDF"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
)


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an accepted image declares."""

    format: str  # "JPEG", "PNG", "BMP", "WebP" or "TIFF"
    width: int
    height: int


def inspect_image(data: bytes) -> ImageHeader:
    """Identify the image type from its signature and read its declared size without decoding.

    Raises:
        InvalidImage: empty bytes, an unknown signature, or a truncated/corrupt header.
        UnsupportedImageType: a recognised image format that the engine does not accept.
    """
    if not data:
        raise InvalidImage("image is empty (0 bytes)")
    if data[4:8] == b"ftyp":
        brand = data[8:12].decode("ascii", "replace")
        raise UnsupportedImageType(
            f"HEIF/AVIF images (brand '{brand}') are not supported; send JPEG, PNG, BMP, WebP or TIFF"
        )
    for signature, name in _UNSUPPORTED_SIGNATURES:
        if data.startswith(signature):
            raise UnsupportedImageType(f"{name} images are not supported; send JPEG, PNG, BMP, WebP or TIFF")
    if data.startswith(b"\xff\xd8\xff"):
        image_format, reader = "JPEG", _jpeg_size
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        image_format, reader = "PNG", _png_size
    elif data.startswith(b"BM"):
        image_format, reader = "BMP", _bmp_size
    elif data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        image_format, reader = "WebP", _webp_size
    elif data.startswith((b"II*\x00", b"MM\x00*")):
        image_format, reader = "TIFF", _tiff_size
    else:
        raise InvalidImage(f"bytes are not a recognised image (they start with 0x{data[:8].hex()})")
    try:
        width, height = reader(data)
    except (struct.error, IndexError):
        raise InvalidImage(f"{image_format} header is truncated") from None
    if width <= 0 or height <= 0:
        raise InvalidImage(f"{image_format} header declares an empty image ({width}x{height})")
    return ImageHeader(image_format, width, height)


def decode_image(data: bytes | bytearray | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an upright 8-bit BGR array of shape (H, W, 3).

    Raises:
        InvalidImage, UnsupportedImageType: see `inspect_image`; also bytes OpenCV cannot decode.
        ImageTooLarge: the header declares more than `max_pixels` pixels.
    """
    data = bytes(data) if isinstance(data, memoryview) else data
    return _decode(data, inspect_image(data), max_pixels, cv2.IMREAD_COLOR)


def _decode(data: bytes | bytearray, header: ImageHeader, max_pixels: int, flag: int) -> np.ndarray:
    if header.width * header.height > max_pixels:
        raise ImageTooLarge(
            f"{header.format} image is {header.width}x{header.height} = {header.width * header.height:,} pixels; "
            f"the limit is {max_pixels:,}"
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as error:
        raise InvalidImage(f"{header.format} data could not be decoded: {error.err or error}") from None
    if image is None:
        raise InvalidImage(f"{header.format} data could not be decoded (corrupt or truncated)")
    return image


_REDUCED_JPEG = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and the upright size of the original, larger than `pixels` when decoded at reduced scale."""

    pixels: np.ndarray  # BGR uint8 (h, w, 3)
    height: int
    width: int


def decode_image_at_least(
    data: bytes | bytearray | memoryview,
    min_height: int,
    min_width: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    header: ImageHeader | None = None,
) -> DecodedImage:
    """Decode image bytes, a JPEG at the smallest of 1/8, 1/4 and 1/2 scale (libjpeg scales while it decodes,
    in less time and memory) that is still at least `min_height` x `min_width`, sides as stored (before the EXIF
    orientation turns them); other images, and JPEGs not that much larger, in full. Raises as `decode_image`.
    `header` is the data's `inspect_image`, when the caller has read it already.

    Examples:
        >>> import cv2, numpy as np
        >>> frame = cv2.imencode(".jpg", np.zeros((2160, 3840, 3), np.uint8))[1].tobytes()
        >>> decoded = decode_image_at_least(frame, 360, 640)
        >>> decoded.pixels.shape, (decoded.height, decoded.width)
        ((540, 960, 3), (2160, 3840))
    """
    data = bytes(data) if isinstance(data, memoryview) else data
    header = header or inspect_image(data)
    for factor, flag in _REDUCED_JPEG if header.format == "JPEG" else ():
        height, width = -(-header.height // factor), -(-header.width // factor)  # libjpeg rounds up
        if height >= min_height and width >= min_width:
            image = _decode(data, header, max_pixels, flag)
            turned = image.shape[:2] != (height, width)  # the EXIF orientation swapped the sides
            return DecodedImage(image, *((header.width, header.height) if turned else (header.height, header.width)))
    image = _decode(data, header, max_pixels, cv2.IMREAD_COLOR)
    return DecodedImage(image, image.shape[0], image.shape[1])


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file (its name is ignored; the type comes from its bytes)."""
    return decode_image(Path(path).read_bytes(), max_pixels)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG marker segments up to the first scan; also reject data without an end-of-image marker.

    Entropy-coded data never contains 0xFFD9 (0xFF is stuffed as 0xFF00), so a JPEG whose
    bytes after the first start-of-scan hold no EOI marker was cut short. OpenCV 5 refuses most
    such files itself, but OpenCV 4 half-decodes them into grey blocks (libjpeg only warns),
    which would silently produce wrong detections.
    """
    size = None
    position = 2
    while True:
        if data[position] != 0xFF:
            raise InvalidImage(f"JPEG header is corrupt (no marker at byte {position})")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker == 0xD9:
            raise InvalidImage("JPEG ends before its image data")
        (length,) = struct.unpack_from(">H", data, position + 2)
        if length < 2:
            raise InvalidImage(f"JPEG header is corrupt (segment length {length} at byte {position})")
        if marker in _JPEG_SOF_MARKERS:
            height, width = struct.unpack_from(">HH", data, position + 5)
            size = width, height
        elif marker == 0xDA:  # start of scan: the header is over
            if size is None:
                raise InvalidImage("JPEG has no frame header before its image data")
            if data.rfind(b"\xff\xd9", position) < 0:
                raise InvalidImage("JPEG is truncated: its image data has no end-of-image marker")
            return size
        position += 2 + length


def _png_size(data: bytes) -> tuple[int, int]:
    width, height = struct.unpack_from(">II", data, 16)
    if data[12:16] != b"IHDR":
        raise InvalidImage("PNG does not start with an IHDR chunk")
    return width, height


def _bmp_size(data: bytes) -> tuple[int, int]:
    (info_size,) = struct.unpack_from("<I", data, 14)
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:  # BITMAPINFOHEADER and later: signed 32-bit, negative height means top-down rows
        width, height = struct.unpack_from("<ii", data, 18)
    return width, abs(height)


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        if data[23:26] != b"\x9d\x01\x2a":
            raise InvalidImage("WebP lossy frame header is corrupt")
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit sizes minus one, packed after the signature byte
        if data[20:21] != b"\x2f":
            raise InvalidImage("WebP lossless header is corrupt")
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        width_low, width_high, height_low, height_high = struct.unpack_from("<HBHB", data, 24)
        return (width_low | width_high << 16) + 1, (height_low | height_high << 16) + 1
    raise InvalidImage(f"WebP starts with an unknown chunk {chunk!r}")


def _tiff_size(data: bytes) -> tuple[int, int]:
    """Read ImageWidth (256) and ImageLength (257) from the first IFD, the page OpenCV decodes."""
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (entries,) = struct.unpack_from(order + "H", data, ifd)
    sizes: dict[int, int] = {}
    for entry in range(entries):
        tag, value_type = struct.unpack_from(order + "HH", data, ifd + 2 + 12 * entry)
        if tag in (256, 257):
            value_format = order + ("H" if value_type == 3 else "I")  # SHORT or LONG
            (sizes[tag],) = struct.unpack_from(value_format, data, ifd + 2 + 12 * entry + 8)
            if len(sizes) == 2:
                return sizes[256], sizes[257]
    raise InvalidImage("TIFF first page has no width/height tags")
