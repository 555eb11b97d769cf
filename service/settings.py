"""Service settings: environment variables ``DETECT_*``, each also a ``python -m service --kebab-case`` flag."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.images import DEFAULT_MAX_PIXELS
from engine.preprocess import MAX_IMGSZ

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
"""The repository's (or the container's /app) ``weights/`` folder, found relative to this package."""

MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ModelSource:
    """A model the service serves: its name in URLs and the ONNX file it is loaded from."""

    name: str
    path: Path


def default_model_sources() -> list[ModelSource]:
    """Every ``*.onnx`` in the weights folder, named by file stem."""
    return [ModelSource(path.stem, path) for path in sorted(WEIGHTS_DIR.glob("*.onnx"))]


def parse_model_sources(spec: str) -> list[ModelSource]:
    """Parse ``[name=]path.onnx,...``; a name defaults to the file stem."""
    sources = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, separator, path = item.partition("=")
        if not separator:
            name, path = Path(item).stem, item
        sources.append(ModelSource(name.strip(), Path(path.strip()).expanduser()))
    return sources


def _split_list(value: Any) -> Any:
    """Comma-separated text to a list of non-empty, stripped items (lists pass through)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Everything the service can be configured with. Field descriptions become the ``--help`` text."""

    model_config = SettingsConfigDict(env_prefix="DETECT_", extra="forbid")

    models: Annotated[list[ModelSource], NoDecode] = Field(
        default_factory=default_model_sources,
        description="comma-separated [name=]path.onnx; a name defaults to the file stem",
        json_schema_extra={"default_text": f"every *.onnx in {WEIGHTS_DIR}"},
    )
    default_model: str | None = Field(
        None,
        description="model used when a request names none",
        json_schema_extra={"default_text": "the first model"},
    )
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in a container)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on")
    device: str = Field("cpu", description="ONNX Runtime device: cpu, cuda or cuda:N")
    threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per model instance; 0 = chosen with the instances"
    )
    instances: int = Field(
        0,
        ge=0,
        le=64,
        description="model instances per model (sessions that run at once, like Triton's instance_group count); "
        "0 = one single-threaded instance per core on CPU, up to 8 (then the cores are shared as threads)",
    )
    solo_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="ONNX Runtime intra-op threads of a run that starts while no other run goes and no request waits "
        "(one more session of the model): a lone request uses the cores the instances share under load; 0 = chosen "
        "(the cores, up to 4, with several single-threaded instances on CPU); at most DETECT_THREADS = no such session",
    )
    reduced_decoding: bool = Field(
        True,
        description="decode a JPEG at 1/2, 1/4 or 1/8 scale in libjpeg when it stays at least as large as the model "
        "input needs (camera frames: half the decoding time); boxes stay in the original's pixels",
    )
    max_batch: int = Field(8, ge=1, le=256, description="most images in one micro-batched model run")
    inference_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="how much lower the CPU priority of model runs is than that of HTTP and decoding (nice value, "
        "Linux); keeps answers and 503s immediate while the model keeps every core busy; 0 = the same priority",
    )
    max_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="how long the first request of a batch waits for others to join; 0 = a batch is what queued "
        "while the instances were busy (Triton's default); more trades latency for batch size",
    )
    queue_size: int = Field(32, ge=1, description="requests waiting per model before new ones get 503")
    request_timeout_s: float = Field(30.0, gt=0, description="processing time limit of one request (504 after it)")
    max_upload_bytes: int = Field(20 * MIB, ge=1, description="largest request body in bytes (413 above it)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest image in pixels, read from its header (413)")
    max_images: int = Field(16, ge=1, description="most images in one request, multipart files or JSON list (413)")
    max_request_pixels: int = Field(
        100_000_000, ge=1, description="most pixels of all the images of one request, read from their headers (413)"
    )
    max_imgsz: int = Field(
        1920,
        ge=32,
        le=MAX_IMGSZ,  # the engine's own bound
        description="largest imgsz a request may ask for (422); a model run at 1920 needs about 0.5 GB (SERVICE.md)",
    )
    max_classes: int = Field(1000, ge=1, description="most entries in a request's classes filter (422)")
    max_json_depth: int = Field(32, ge=2, le=512, description="deepest nesting of a JSON body (400)")
    max_header_bytes: int = Field(
        16384, ge=1024, description="largest request line and headers in bytes (400 for the line, 431 for headers)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="time for a request's headers to arrive once its connection is idle (408, or closed)"
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="time for a request's body to arrive once its headers have (408)"
    )
    max_connections: int = Field(
        1024, ge=1, description="open connections above which new ones get 503 (probes excepted)"
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="comma-separated API keys; empty = no authentication"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS (* for any); empty = none"
    )
    log_format: Literal["text", "json"] = Field("text", description="log line format: text or json")
    watch: bool = Field(False, description="reload a model when its file changes")
    graceful_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        return parse_model_sources(value) if isinstance(value, str) else value

    @field_validator("models")
    @classmethod
    def _check_models(cls, sources: list[ModelSource]) -> list[ModelSource]:
        seen: set[str] = set()
        for source in sources:
            if not MODEL_NAME_PATTERN.match(source.name):
                raise ValueError(
                    f"model name {source.name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                    "(starting with a letter or digit)"
                )
            if source.name in seen:
                raise ValueError(f"model name {source.name!r} is used twice; name them: name=path.onnx")
            seen.add(source.name)
        return sources

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if not _DEVICE_PATTERN.match(device):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
        return device

    @model_validator(mode="after")
    def _check_default_model(self) -> Settings:
        names = [source.name for source in self.models]
        if self.default_model is None:
            self.default_model = names[0] if names else None
        elif self.default_model not in names:
            raise ValueError(
                f"default_model {self.default_model!r} is not one of the models ({', '.join(names) or 'none'})"
            )
        return self

    def api_key_values(self) -> list[bytes]:
        """The configured API keys as bytes, for constant-time comparison."""
        return [key.get_secret_value().encode() for key in self.api_keys]
