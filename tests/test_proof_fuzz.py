"""Hostile input against a real `python -m service`: thousands of malformed requests on every route, then
schemathesis against the server's own OpenAPI document.

The requests are written byte for byte and sent over raw sockets, so that nothing is refused or repaired on
the client side: corrupted and truncated images, random bytes, headers declaring huge images, empty files,
wrong content types, broken multipart, enormous headers, bad parameter values and types, KServe tensors of the
wrong shape, type and size with malformed binary headers, bad model names, and requests malformed at the HTTP
level. Expected: no 5xx, every 4xx a JSON error in the dialect of its API, and the server alive and detecting
exactly as before. FUZZ_COUNT requests (PROOF_FUZZ_COUNT=10000 for a long run), reproducible from FUZZ_SEED.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import random
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import cv2
import httpx
import numpy as np
import pytest
from proof_fixtures import ProofPhoto, proof_photo  # noqa: F401  # fixture
from service_fixtures import metric_value, servers  # noqa: F401  # fixture

FUZZ_COUNT = int(os.environ.get("PROOF_FUZZ_COUNT", "1000"))
FUZZ_SEED = 20261124
SCHEMATHESIS_EXAMPLES = 25
"""Most examples per operation and generation mode (positive and negative): about 600 requests in all."""

MODEL = "bccd"
ANSWER_TIMEOUT_S = 30.0


# ------------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Hostile:
    """One malformed request, exactly as it goes on the wire.

    `app_level` False: malformed at the HTTP level, so uvicorn's parser answers (its plain-text 400) or closes
    the connection before the application sees anything. `half_close`: the client stops sending before the
    declared body is complete, so no answer can come.
    """

    kind: str
    path: str
    wire: bytes
    app_level: bool = True
    half_close: bool = False


def http_request(method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> bytes:
    """An HTTP/1.1 request that asks the server to close after answering; Content-Length from the body unless the
    headers give one (or Transfer-Encoding)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    given = headers or []
    lines += [f"{name}: {value}" for name, value in given]
    if not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in given):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "fuzz-boundary") -> bytes:
    """A multipart/form-data body of (name, filename or None for a plain field, content) parts."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("latin-1") + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def multipart_request(path: str, parts: list[tuple[str, str | None, bytes]], boundary: str = "fuzz-boundary") -> bytes:
    return http_request(
        "POST", path, multipart(parts, boundary), [("Content-Type", f"multipart/form-data; boundary={boundary}")]
    )


def json_request(path: str, document: object) -> bytes:
    return http_request("POST", path, json.dumps(document).encode(), [("Content-Type", "application/json")])


# ------------------------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, wire: bytes, half_close: bool = False) -> Answer | None:
    """Send `wire` on a new connection and read the answer until the server closes (every request says
    Connection: close); None when the connection ends without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
        try:
            sock.sendall(wire)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: the answer is still there
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return Answer(int(status_line.split()[1]), headers, body)


def dialect_error(hostile: Hostile, answer: Answer) -> str | None:
    """Why a 4xx answer is not the JSON error of its API (None when it is)."""
    if answer.headers.get("content-type") != "application/json":
        return f"content-type {answer.headers.get('content-type')!r}"
    if hostile.wire.startswith(b"HEAD "):  # the answer to HEAD has headers only
        return f"a body of {len(answer.body)} bytes for HEAD" if answer.body else None
    path = hostile.path
    try:
        document = json.loads(answer.body)
    except ValueError:
        return "a body that is not JSON"
    if not isinstance(document, dict):
        return f"a JSON {type(document).__name__}"
    if path.startswith("/v1/vision/"):
        valid = document.get("success") is False and document.get("code") == answer.status
        valid = valid and isinstance(document.get("error"), str)
    elif path.startswith("/v2"):
        valid = isinstance(document.get("error"), str)
    else:
        error = document.get("error")
        valid = isinstance(error, dict) and error.get("status") == answer.status and bool(error.get("message"))
        valid = valid and isinstance(document.get("request_id"), str)
    return None if valid else f"not the API's error shape: {document}"


# -------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Corpus:
    """Valid images to damage: the 640x480 photo (JPEG) and small PNG, BMP, WebP (lossy, lossless) and TIFF."""

    jpeg: bytes
    others: tuple[bytes, ...]

    @property
    def all(self) -> tuple[bytes, ...]:
        return (self.jpeg, *self.others)


def make_corpus(photo: bytes) -> Corpus:
    small = cv2.resize(cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR), (160, 120))
    encoded = [
        cv2.imencode(".png", small)[1],
        cv2.imencode(".bmp", small)[1],
        cv2.imencode(".webp", small, [cv2.IMWRITE_WEBP_QUALITY, 80])[1],
        cv2.imencode(".webp", small, [cv2.IMWRITE_WEBP_QUALITY, 101])[1],  # above 100: lossless
        cv2.imencode(".tiff", small)[1],
    ]
    return Corpus(photo, tuple(item.tobytes() for item in encoded))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


HUGE_SIZES = [(65535, 65535), (2**31 - 1, 1), (1, 2**31 - 1), (100_000, 100_000), (16383, 16383), (7000, 7000), (0, 9)]
"""Declared sizes: far over the 50-megapixel limit, at the edge of each format's fields, just under the limit
(7000x7000: the header passes, the missing pixel data does not), and empty."""


def huge_header(rng: random.Random) -> bytes:
    """A header of each format declaring a huge (or empty) image, followed by little or no pixel data."""
    width, height = rng.choice(HUGE_SIZES)
    tail = rng.randbytes(rng.randrange(64))
    fmt = rng.choice(["png", "jpeg", "bmp", "webp-vp8x", "webp-vp8l", "webp-vp8", "tiff"])
    if fmt == "png":
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", tail) + _png_chunk(b"IEND", b"")
    if fmt == "jpeg":
        width, height = min(width, 65535), min(height, 65535)
        frame = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
        scan = b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
        return (
            b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
            + b"\xff\xc0"
            + struct.pack(">H", len(frame) + 2)
            + frame
            + b"\xff\xda"
            + struct.pack(">H", len(scan) + 2)
            + scan
            + tail.replace(b"\xff", b"\x00")
            + b"\xff\xd9"
        )
    if fmt == "bmp":
        height = min(height, 2**31 - 1)
        signed_height = -height if rng.random() < 0.5 else height  # negative: rows stored top-down
        info = struct.pack("<IiiHHIIiiII", 40, min(width, 2**31 - 1), signed_height, 1, 24, 0, 0, 0, 0, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + len(tail), 0, 0, 54) + info + tail
    if fmt == "webp-vp8x":
        width, height = min(width, 2**24), min(height, 2**24)
        size = (width - 1) % 2**24, (height - 1) % 2**24
        chunk = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + size[0].to_bytes(3, "little")
        body = b"WEBP" + chunk + size[1].to_bytes(3, "little") + tail
        return b"RIFF" + struct.pack("<I", len(body)) + body
    if fmt == "webp-vp8l":
        bits = ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
        body = b"WEBP" + b"VP8L" + struct.pack("<I", 5 + len(tail)) + b"\x2f" + struct.pack("<I", bits) + tail
        return b"RIFF" + struct.pack("<I", len(body)) + body
    if fmt == "webp-vp8":
        frame = b"\x10\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
        body = b"WEBP" + b"VP8 " + struct.pack("<I", len(frame) + len(tail)) + frame + tail
        return b"RIFF" + struct.pack("<I", len(body)) + body
    entries = struct.pack("<HHII", 256, 4, 1, min(width, 2**32 - 1)) + struct.pack("<HHII", 257, 4, 1, height)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + b"\x00\x00\x00\x00" + tail


FOREIGN_TYPES = [
    (
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00"
        b"\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    ),
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n",
    b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n\x00\x00\x00\x14ftypjp2 ",
    b"8BPS\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03",
    b"II+\x00\x08\x00\x00\x00",
    b"<svg xmlns='http://www.w3.org/2000/svg'/>",
]


def damaged_image(rng: random.Random, corpus: Corpus) -> tuple[str, bytes]:
    """A damaged or hostile image and what was done to it."""
    base = rng.choice(corpus.all)
    how = rng.choice(["truncated", "bit flips", "garbled span", "random bytes", "empty", "huge header", "foreign"])
    if how == "truncated":
        return how, base[: rng.randrange(len(base))]
    if how == "bit flips":
        data = bytearray(base)
        for _ in range(rng.randint(1, 32)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return how, bytes(data)
    if how == "garbled span":
        start = rng.randrange(len(base))
        length = rng.randint(1, 256)
        return how, base[:start] + rng.randbytes(length) + base[start + length :]
    if how == "random bytes":
        return how, rng.randbytes(rng.randrange(1, 4096))
    if how == "empty":
        return how, b""
    if how == "huge header":
        return how, huge_header(rng)
    return how, rng.choice(FOREIGN_TYPES)


# ------------------------------------------------------------------------------------------ parameters

BAD_FORM_VALUES = {
    "conf": ["-1", "abc", "NaN", "nan", "inf", "-inf", "1e999", "", " ", "0x10", "1,2", "2", "\xb2", "--1"],
    "iou": ["-0.1", "1.01", "NaN", "xyz", "", "1e-999999", "[0.5]"],
    "imgsz": ["0", "-32", "33", "1e9", "9" * 30, "7681", "7712", "abc", "1.5", "NaN", "320.5", ""],
    "max_det": ["0", "-1", "30001", "1e3", "abc", "9" * 25, "", "0.5"],
    "classes": ["unknown", "99", "-1", ",,,", "RBC,,WBC", "\xb2", "0,1,2,3", "[0]", "null", "RBC,Neutrophil"],
    "model": ["nope", "", "../bccd", "a" * 300, "bccd\x00", "BCCD", " bccd"],
    "normalize": ["maybe", "2", "", "yes please"],
    "format": ["gif", "", "JPEG", "png\x00"],
    "confidence": ["0.5"],
    "": ["x"],
}
BAD_JSON_VALUES: dict[str, list[object]] = {
    "conf": [-1, "abc", None, [], {}, 1e308, True, float("nan"), float("inf"), 10**400],
    "iou": [-0.5, 2, "0.5.5", [0.5], float("-inf")],
    "imgsz": [1e9, 10**30, -1, "x", [320], 320.5, 0, 7712],
    "max_det": [0, 2**70, 1.5, "many", -(2**70)],
    "classes": [["RBC", "Nope"], [99], [[0]], {"a": 1}, [True], [None], 7, ""],
    "model": ["nope", 5, None, ["bccd"], "\ud800"],
    "normalize": ["yes", 2, [], {}],
    "format": ["gif", 1],
    "\udfff": [1],
    "images_url": ["http://example.com/a.jpg"],
}


def _bad_form_params(rng: random.Random, names: list[str]) -> list[tuple[str, str | None, bytes]]:
    chosen = rng.sample(names, rng.randint(1, 3))
    return [(name, None, rng.choice(BAD_FORM_VALUES[name]).encode("latin-1")) for name in chosen]


# ----------------------------------------------------------------------------------------- categories

NATIVE_PARAMS = ["conf", "iou", "imgsz", "max_det", "classes", "model", "normalize", "confidence", ""]
CUSTOM_MODEL_NAMES = [MODEL, "nope", "%2e%2e", "a" * 200, "%00", "%ff%fe", "bccd%2Freload", "list%20", "%ED%A0%80"]
BAD_MODEL_PATHS = ["nope", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "a" * 500, "%00", "%ff", "bccd%20", "BCCD", "-", "."]


def native_multipart_image(rng: random.Random, corpus: Corpus) -> Hostile:
    how, image = damaged_image(rng, corpus)
    path = rng.choice(["/v1/detect", "/v1/detect/annotated"])
    return Hostile(f"multipart image: {how}", path, multipart_request(path, [("image", "x.jpg", image)]))


def native_json_image(rng: random.Random, corpus: Corpus) -> Hostile:
    how, image = damaged_image(rng, corpus)
    encoded = base64.b64encode(image).decode()
    if rng.random() < 0.3:
        encoded = "data:image/jpeg;base64," + encoded
    path = rng.choice(["/v1/detect", "/v1/detect/annotated"])
    return Hostile(f"base64 image: {how}", path, json_request(path, {"images": [encoded]}))


def native_bad_form_params(rng: random.Random, corpus: Corpus) -> Hostile:
    path = rng.choice(["/v1/detect", "/v1/detect/annotated"])
    names = NATIVE_PARAMS + (["format"] if path.endswith("annotated") else [])
    params = _bad_form_params(rng, names)
    if rng.random() < 0.5:  # in the query string instead of the form
        query = "&".join(f"{quote(name)}={quote(value.decode('latin-1'))}" for name, _, value in params)
        target = f"{path}?{query}"
        return Hostile("bad query parameters", target, multipart_request(target, [("image", "a.jpg", corpus.jpeg)]))
    return Hostile("bad form parameters", path, multipart_request(path, [("image", "a.jpg", corpus.jpeg), *params]))


def native_bad_json(rng: random.Random, corpus: Corpus) -> Hostile:
    path = rng.choice(["/v1/detect", "/v1/detect/annotated"])
    image = base64.b64encode(corpus.others[0]).decode()
    shape = rng.randrange(4)
    if shape == 0:  # bad parameter values and types
        document = {"images": [image]}
        for name in rng.sample(list(BAD_JSON_VALUES), rng.randint(1, 3)):
            document[name] = rng.choice(BAD_JSON_VALUES[name])
        body = json.dumps(document).encode()
        kind = "bad JSON parameters"
    elif shape == 1:  # the images themselves
        images = rng.choice(
            [image, [], [None], [5], [[image]], ["***"], ["data:image/png,abc"], ["file:///etc/passwd"], ["\ud800"]]
        )
        body = json.dumps({"images": images}).encode()
        kind = "bad JSON images"
    elif shape == 2:  # not a JSON object, or not JSON at all
        body = rng.choice(
            [b"[1, 2]", b'"images"', b"null", b"{", b"{'images': []}", b"\xff\xfe{}", b"", b"NaN", b"{}" * 3]
        )
        kind = "malformed JSON"
    else:  # nesting deeper than any parser recursion limit
        depth = rng.choice([1000, 10_000, 100_000])
        body = rng.choice([b"[" * depth + b"]" * depth, b'{"images": ' + b"[" * depth + b"]" * depth + b"}"])
        kind = "deeply nested JSON"
    return Hostile(kind, path, http_request("POST", path, body, [("Content-Type", "application/json")]))


def wrong_content_type(rng: random.Random, corpus: Corpus) -> Hostile:
    path = rng.choice(["/v1/detect", "/v1/detect/annotated", "/v1/vision/detection", f"/v1/vision/custom/{MODEL}"])
    body = rng.choice(
        [multipart([("image", "a.jpg", corpus.jpeg)]), json.dumps({"images": ["aGk="]}).encode(), corpus.jpeg, b"a=b"]
    )
    content_type = rng.choice(
        [
            "application/json",
            "text/plain",
            "image/jpeg",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "multipart/mixed; boundary=fuzz-boundary",
            "application/json; charset=utf-16",
            ";;;",
            "application/vnd.api+json",
            "",
        ]
    )
    headers = [("Content-Type", content_type)] if content_type else []
    return Hostile(f"Content-Type {content_type!r}", path, http_request("POST", path, body, headers))


def broken_multipart(rng: random.Random, corpus: Corpus) -> Hostile:
    path = rng.choice(["/v1/detect", "/v1/detect/annotated", "/v1/vision/detection", f"/v1/vision/custom/{MODEL}"])
    image = rng.choice(corpus.others)
    good = multipart([("image", "a.png", image)])
    variants: dict[str, tuple[str, bytes]] = {
        "other boundary": ("boundary=not-the-one", good),
        "no boundary": ("", good),
        "empty boundary": ("boundary=", good),
        "no terminator": ("boundary=fuzz-boundary", good[: -len(b"--fuzz-boundary--\r\n")]),
        "cut anywhere": ("boundary=fuzz-boundary", good[: rng.randrange(len(good))]),
        "garbage preamble": ("boundary=fuzz-boundary", rng.randbytes(200) + b"\r\n" + good),
        "no disposition": (
            "boundary=fuzz-boundary",
            b"--fuzz-boundary\r\nContent-Type: image/png\r\n\r\n" + image + b"\r\n--fuzz-boundary--\r\n",
        ),
        "part header without colon": (
            "boundary=fuzz-boundary",
            b"--fuzz-boundary\r\nnonsense\r\n\r\n" + image + b"\r\n--fuzz-boundary--\r\n",
        ),
        "nameless part": (
            "boundary=fuzz-boundary",
            b'--fuzz-boundary\r\nContent-Disposition: form-data; filename="a"\r\n\r\nxx\r\n--fuzz-boundary--\r\n',
        ),
        "boundary of 200 characters": ("boundary=" + "b" * 200, multipart([("image", "a", image)], "b" * 200)),
        "2,000 parts": ("boundary=fuzz-boundary", multipart([("image", f"{i}.png", b"x") for i in range(2000)])),
        "2,000 fields": ("boundary=fuzz-boundary", multipart([(f"f{i}", None, b"x") for i in range(2000)])),
        "latin-1 names": ("boundary=fuzz-boundary", multipart([("\xe9\xff", "\xff.png", image)])),
        "image as a text field": ("boundary=fuzz-boundary", multipart([("image", None, b"not a file")])),
        "parameter as a file": (
            "boundary=fuzz-boundary",
            multipart([("image", "a.png", image), ("conf", "conf.txt", b"0.5"), ("min_confidence", "m", b"1")]),
        ),
        "three images": ("boundary=fuzz-boundary", multipart([("image", f"{i}.png", image) for i in range(3)])),
        "huge part header": (
            "boundary=fuzz-boundary",
            b'--fuzz-boundary\r\nContent-Disposition: form-data; name="image"; filename="'
            + b"f" * 200_000
            + b'"\r\n\r\n'
            + image
            + b"\r\n--fuzz-boundary--\r\n",
        ),
    }
    name = rng.choice(list(variants))
    parameter, body = variants[name]
    content_type = "multipart/form-data" + (f"; {parameter}" if parameter else "")
    return Hostile(f"multipart: {name}", path, http_request("POST", path, body, [("Content-Type", content_type)]))


def deepstack_image(rng: random.Random, corpus: Corpus) -> Hostile:
    how, image = damaged_image(rng, corpus)
    model = rng.choice(CUSTOM_MODEL_NAMES)
    path = rng.choice(["/v1/vision/detection", f"/v1/vision/custom/{model}"])
    fields: list[tuple[str, str | None, bytes]] = [("image", "a.jpg", image)]
    if rng.random() < 0.5:
        value = rng.choice(["-1", "1.5", "abc", "NaN", "inf", "", "0x1", "\xb2", "1e999"])
        fields.append(("min_confidence", None, value.encode("latin-1")))
    if rng.random() < 0.2:
        fields.append(("api_key", None, rng.randbytes(20).hex().encode()))
    return Hostile(f"DeepStack: {how}", path, multipart_request(path, fields))


def _tensor(shape: list[int], value: float = 0.5) -> list[float]:
    return [value] * int(np.prod(shape))


KSERVE_SHAPES: list[object] = [
    [],
    [1],
    [1, 3, 32],
    [1, 3, 32, 33],
    [0, 3, 32, 32],
    [-1, 3, 32, 32],
    [9, 3, 32, 32],
    [1, 4, 32, 32],
    [1, 3, 7712, 32],
    [1, 3, 2**40, 32],
    [1, 3, 32, 32, 1],
    ["a", 3, 32, 32],
    [1.5, 3, 32, 32],
    None,
    "1,3,32,32",
]
KSERVE_DATA: list[object] = [
    [],
    [0.5] * 100,
    ["0.5"] * 3072,
    [[0.5] * 1024] * 3,
    [[0.5], [0.5, 0.5]],
    [None] * 3072,
    [{"a": 1}] * 3072,
    [10**400] + [0.5] * 3071,
    [1e400] + [0.5] * 3071,
    [float("nan")] * 3072,
    [True] * 3072,
    "0.5",
    {"0": 0.5},
]


def kserve_json(rng: random.Random, corpus: Corpus) -> Hostile:
    model = rng.choice([MODEL, MODEL, "nope", "%ff"])
    version = rng.choice(["", "", "/versions/1", "/versions/2", "/versions/abc", "/versions/%00"])
    path = f"/v2/models/{model}{version}/infer"
    tensor: dict[str, object] = {"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": _tensor([3072])}
    document: dict[str, object] = {"inputs": [tensor]}
    mutation = rng.choice(["name", "datatype", "shape", "data", "parameters", "outputs", "top level", "inputs"])
    if mutation == "name":
        tensor["name"] = rng.choice(["image", "", None, 5, "\ud800", "images\x00"])
    elif mutation == "datatype":
        tensor["datatype"] = rng.choice(["FP16", "INT8", "BYTES", "fp32", "", None, "FP64", 32])
    elif mutation == "shape":
        tensor["shape"] = rng.choice(KSERVE_SHAPES)
    elif mutation == "data":
        tensor["data"] = rng.choice(KSERVE_DATA)
    elif mutation == "parameters":
        tensor["parameters"] = rng.choice(
            [
                {"binary_data_size": rng.choice(["abc", -1, 1e20, True, [], None, 12288, 0])},
                {"shared_memory_region": "r"},
                [],
                "x",
            ]
        )
    elif mutation == "outputs":
        document["outputs"] = rng.choice(
            [
                [{"name": "nope"}],
                [{"name": "output0", "parameters": {"classification": 3}}],
                [{"name": "output0", "parameters": {"binary_data": "yes"}}],
                [{}],
                "output0",
                [None],
            ]
        )
    elif mutation == "top level":
        document.update(rng.choice([{"id": 5}, {"id": ["x"]}, {"parameters": []}, {"parameters": {"x": "\ud800"}}]))
    else:
        document["inputs"] = rng.choice([[], [tensor, tensor], None, {}, [None], ["images"]])
    return Hostile(f"KServe JSON: {mutation}", path, json_request(path, document))


def kserve_binary(rng: random.Random, corpus: Corpus) -> Hostile:
    path = f"/v2/models/{MODEL}/infer"
    shape = rng.choice([[1, 3, 32, 32], [2, 3, 64, 32]])
    data = np.full(shape, 0.25, "<f4").tobytes()
    size = len(data)
    mutation = rng.choice(["header length", "binary_data_size", "data length", "encoding", "valid with noise"])
    declared_size: object = size
    if mutation == "binary_data_size":
        declared_size = rng.choice([size - 4, size + 4, 0, -1, "abc", 2**64, 1.5])
    if mutation == "data length":
        data = data[: rng.randrange(len(data))] if rng.random() < 0.5 else data + rng.randbytes(rng.randint(1, 64))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": declared_size},
                }
            ],
            "outputs": [{"name": "output0", "parameters": {"binary_data": rng.random() < 0.5}}],
        }
    ).encode()
    body = header + data
    header_length = str(len(header))
    if mutation == "header length":
        header_length = rng.choice(
            ["", "-1", "abc", "\xb2", "\xb9\xb2", "1e3", " 12", "0", str(len(header) - 1), str(len(body) + 1), "9" * 40]
        )
    headers = [("Inference-Header-Content-Length", header_length), ("Content-Type", "application/octet-stream")]
    if mutation == "encoding":
        encoding = rng.choice(["gzip", "deflate", "br", "gzip, gzip", "identity, gzip", "x-unknown"])
        compressed = zlib.compress(body)
        body = rng.choice([compressed, compressed[: len(compressed) // 2], rng.randbytes(100), b""])
        headers.append(("Content-Encoding", encoding))
    if mutation == "valid with noise":
        headers.append(("X-Noise", "n" * rng.randint(1, 10_000)))
    return Hostile(f"KServe binary: {mutation}", path, http_request("POST", path, body, headers))


def kserve_get(rng: random.Random, corpus: Corpus) -> Hostile:
    model = rng.choice([MODEL, *BAD_MODEL_PATHS])
    suffix = rng.choice(["", "/ready", "/config", "/versions/1", "/versions/0/config", "/versions/x/ready"])
    path = f"/v2/models/{model}{suffix}"
    return Hostile("KServe metadata", path, http_request(rng.choice(["GET", "POST", "DELETE"]), path))


def reload_bad_name(rng: random.Random, corpus: Corpus) -> Hostile:
    path = f"/v1/models/{rng.choice(BAD_MODEL_PATHS)}/reload"
    method = rng.choice(["POST", "POST", "GET", "PUT"])
    body = rng.choice([b"", b'{"name": "bccd"}', rng.randbytes(64)])
    return Hostile("reload with a bad name", path, http_request(method, path, body))


def wrong_method(rng: random.Random, corpus: Corpus) -> Hostile:
    path = rng.choice(["/v1/detect", "/v1/detect/annotated", "/v1/vision/detection", f"/v2/models/{MODEL}/infer"])
    return Hostile("wrong method", path, http_request(rng.choice(["GET", "PUT", "DELETE", "PATCH", "HEAD"]), path))


def enormous_headers(rng: random.Random, corpus: Corpus) -> Hostile:
    path = rng.choice(["/v1/detect", "/v1/vision/detection", f"/v2/models/{MODEL}/infer"])
    how = rng.choice(["one 1 MB header", "10,000 headers", "1 MB request id", "1 MB API key", "1 MB content type"])
    if how == "one 1 MB header":
        headers = [("X-Junk", "j" * 2**20)]
    elif how == "10,000 headers":
        headers = [(f"X-H{i}", "v") for i in range(10_000)]
    elif how == "1 MB request id":
        headers = [("X-Request-ID", "r" * 2**20)]
    elif how == "1 MB API key":
        headers = [("Authorization", "Bearer " + "k" * 2**20)]
    else:
        headers = [("Content-Type", "multipart/form-data; boundary=fuzz-boundary; x=" + "c" * 2**20)]
    headers.append(("Content-Type", "multipart/form-data; boundary=fuzz-boundary"))
    return Hostile(
        f"enormous headers: {how}", path, http_request("POST", path, multipart([("image", "a", b"x")]), headers)
    )


HTTP_LEVEL = [
    ("bad request line", b"GARBAGE\r\n\r\n"),
    ("HTTP/0.9", b"GET /\r\n\r\n"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("header without colon", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n"),
    ("NUL in a header", b"GET /healthz HTTP/1.1\r\nHost: x\x00y\r\n\r\n"),
    (
        "two Content-Lengths",
        b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ),
    ("negative Content-Length", b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\nabc"),
    ("Content-Length in letters", b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\nabc"),
    (
        "Content-Length and chunked",
        b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "bad chunk size",
        b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ),
    ("control character in the method", b"G\x01T /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("space in the path", b"GET /v1/ models HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("1 MB URL", b"GET /v1/models/" + b"a" * 2**20 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("HTTP/3.0", b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n"),
]


def http_level(rng: random.Random, corpus: Corpus) -> Hostile:
    name, wire = rng.choice(HTTP_LEVEL)
    return Hostile(f"HTTP level: {name}", "/", wire, app_level=False)


def short_body(rng: random.Random, corpus: Corpus) -> Hostile:
    """The body stops before its Content-Length and the client closes its side: no one is left to answer."""
    path = rng.choice(["/v1/detect", "/v1/vision/detection", f"/v2/models/{MODEL}/infer"])
    body = multipart([("image", "a.jpg", corpus.jpeg)])
    cut = body[: rng.randrange(len(body))]
    headers = [("Content-Type", "multipart/form-data; boundary=fuzz-boundary"), ("Content-Length", str(len(body)))]
    return Hostile("body shorter than Content-Length", path, http_request("POST", path, cut, headers), half_close=True)


def odd_urls(rng: random.Random, corpus: Corpus) -> Hostile:
    path = rng.choice(
        [
            "/v1/detect?conf=%ff&%00=1",
            "/v1/detect?" + "&".join(f"p{i}=1" for i in range(2000)),
            "/v1/models/%ED%A0%80",
            "//v1//detect",
            "/v1/detect/",
            "/v1/detect%00",
            "/v2/models//infer",
            "/v1/vision/custom/",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/static/../../service/settings.py",
            "/v1/detect?classes=" + "0," * 5000,
        ]
    )
    return Hostile("odd URL", path, multipart_request(path, [("image", "a.png", corpus.others[0])]))


CATEGORIES: list[Callable[[random.Random, Corpus], Hostile]] = [
    native_multipart_image,
    native_json_image,
    native_bad_form_params,
    native_bad_json,
    wrong_content_type,
    broken_multipart,
    deepstack_image,
    kserve_json,
    kserve_binary,
    kserve_get,
    reload_bad_name,
    wrong_method,
    enormous_headers,
    http_level,
    short_body,
    odd_urls,
]


def hostile_requests(count: int, seed: int, corpus: Corpus) -> list[Hostile]:
    """`count` hostile requests, every category in turn, each drawn from one seeded generator."""
    rng = random.Random(seed)
    return [CATEGORIES[index % len(CATEGORIES)](rng, corpus) for index in range(count)]


# --------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def server(servers, trained_onnx_dynamic):  # noqa: F811
    return servers({"MODELS": f"{MODEL}={trained_onnx_dynamic}"})


def _detect(server, photo: ProofPhoto) -> list[dict]:
    response = httpx.post(
        server.url + "/v1/detect", files={"image": ("p.jpg", photo.data)}, data={"conf": photo.conf}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["detections"]


def _server_errors(server) -> dict[str, str]:
    """The 5xx answers counted by the server's metrics, by route and status."""
    metrics = httpx.get(server.url + "/metrics").text
    lines = [line for line in metrics.splitlines() if line.startswith("detect_http_requests_total{")]
    return dict(line.rsplit(" ", 1) for line in lines if 'status="5' in line)


def _requests_answered(server) -> float:
    """How many requests the server has answered, by its metrics."""
    metrics = httpx.get(server.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("detect_http_requests_total{")
    )


def test_the_generator_is_reproducible(proof_photo):  # noqa: F811
    corpus = make_corpus(proof_photo.data)
    assert hostile_requests(60, FUZZ_SEED, corpus) == hostile_requests(60, FUZZ_SEED, corpus)
    assert hostile_requests(60, FUZZ_SEED, corpus) != hostile_requests(60, FUZZ_SEED + 1, corpus)


@pytest.mark.slow
def test_hostile_requests_get_json_4xx_and_leave_the_server_intact(server, proof_photo):  # noqa: F811
    before = _detect(server, proof_photo)
    assert before
    server_errors_before = _server_errors(server)  # the 503s of /readyz while the model loaded
    requests = hostile_requests(FUZZ_COUNT, FUZZ_SEED, make_corpus(proof_photo.data))
    histogram: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    started = time.monotonic()
    for index, hostile in enumerate(requests):
        where = f"#{index} {hostile.kind} ({hostile.path[:80]})"
        try:
            answer = exchange(server.port, hostile.wire, hostile.half_close)
        except TimeoutError:
            problems.append(f"{where}: no answer and no close within {ANSWER_TIMEOUT_S:.0f} s")
            continue
        if answer is None:
            histogram["no answer"] += 1
        elif answer.headers.get("content-type", "").startswith("text/plain"):
            histogram[f"{answer.status} from uvicorn's HTTP parser"] += 1
        else:
            histogram[str(answer.status)] += 1
        if answer is None:
            if hostile.app_level and not hostile.half_close:
                problems.append(f"{where}: the connection closed without an answer")
            continue
        if answer.status >= 500:
            problems.append(f"{where}: {answer.status} {answer.body[:300]!r}")
        elif answer.status >= 400 and hostile.app_level and (reason := dialect_error(hostile, answer)):
            problems.append(f"{where}: {answer.status} with {reason}")
        elif answer.status >= 400 and not hostile.app_level and answer.status != 400:
            problems.append(f"{where}: the HTTP parser answered {answer.status}")
        if server.process.poll() is not None:
            pytest.fail(f"the server died at {where}:\n{server.log()[-3000:]}")
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {len(requests)} requests in {elapsed:.1f} s, statuses {dict(sorted(histogram.items()))}")
    assert not problems, f"{len(problems)} bad answers:\n" + "\n".join(problems[:30])

    assert httpx.get(server.url + "/readyz").status_code == 200
    assert _detect(server, proof_photo) == before  # exactly the same detections as before the fuzzing
    # not even for the requests whose client was gone before an answer could be sent
    assert _server_errors(server) == server_errors_before
    assert "unhandled error" not in server.log()


NESTED = b"[" * 100_000 + b"]" * 100_000
_KSERVE_HEADER = json.dumps(
    {
        "inputs": [
            {"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": 12288}}
        ]
    }
).encode()
WERE_SERVER_ERRORS = {  # inputs the fuzzing above found answered with a 500, each now a 4xx saying what is wrong
    "JSON nested 100,000 deep (native)": (
        http_request("POST", "/v1/detect", NESTED, [("Content-Type", "application/json")]),
        400,
        "the JSON body is nested too deeply",
    ),
    "JSON nested 100,000 deep (KServe)": (
        http_request("POST", f"/v2/models/{MODEL}/infer", NESTED),
        400,
        "the inference request is nested too deeply",
    ),
    "superscript digits as Inference-Header-Content-Length": (
        http_request(
            "POST",
            f"/v2/models/{MODEL}/infer",
            _KSERVE_HEADER + bytes(12288),
            [("Inference-Header-Content-Length", "\xb9\xb2")],
        ),
        400,
        "Inference-Header-Content-Length is '\xb9\xb2'; it must be the JSON header's size",
    ),
    "an integer of 400 digits in KServe data": (
        json_request(
            f"/v2/models/{MODEL}/infer",
            {"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [10**400] * 3072}]},
        ),
        400,
        "input data is not a FP32 array: int too large to convert to float",
    ),
    "a parameter named by a lone surrogate": (
        json_request("/v1/detect", {"images": ["aGk="], "\udfff": 1}),
        422,
        "\\udfff: unknown parameter",
    ),
}


@pytest.mark.parametrize("case", list(WERE_SERVER_ERRORS))
def test_inputs_that_were_server_errors_are_client_errors(server, case):
    wire, status, message = WERE_SERVER_ERRORS[case]
    answer = exchange(server.port, wire)
    assert answer is not None and answer.status == status, answer
    document = json.loads(answer.body)
    assert message in (document["error"] if isinstance(document["error"], str) else document["error"]["message"])


def test_a_client_gone_before_its_body_is_not_a_server_error(server, proof_photo):  # noqa: F811
    """A client that stops sending and closes leaves no one to answer: logged and counted as 499, not as a 500
    with a traceback (before, a Starlette ClientDisconnect went up as an unhandled error)."""
    body = multipart([("image", "a.jpg", proof_photo.data)])
    headers = [("Content-Type", "multipart/form-data; boundary=fuzz-boundary"), ("Content-Length", str(len(body)))]
    wire = http_request("POST", "/v1/detect", body[: len(body) // 2], [*headers, ("X-Request-ID", "gone-client")])
    assert exchange(server.port, wire, half_close=True) is None
    deadline = time.monotonic() + 10
    while "[gone-client] POST /v1/detect 499" not in server.log():
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.05)
    assert "unhandled error" not in server.log()
    metrics = httpx.get(server.url + "/metrics").text
    assert (
        metric_value(metrics, "detect_http_requests_total", route="/v1/detect", method="POST", status="499") or 0
    ) >= 1
    assert metric_value(metrics, "detect_http_requests_total", route="/v1/detect", method="POST", status="500") is None


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    answered_before = _requests_answered(server)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=SCHEMATHESIS_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case) -> None:
                case.call_and_validate(
                    base_url=server.url, checks=[not_a_server_error, response_schema_conformance], timeout=30
                )

            try:
                check()
            except Unsatisfiable:  # an operation without parameters or body has no invalid input to send
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as error:  # noqa: BLE001  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} ({mode.value}): {error}")
    sent = _requests_answered(server) - answered_before
    print(f"\nschemathesis {schemathesis.__version__}: {operations} operations, {sent} requests")
    assert operations >= 15
    assert not failures, "\n\n".join(failures)
    assert server.process.poll() is None
