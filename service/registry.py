"""The served models: loading off the event loop, readiness, atomic hot reload and the optional file watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from engine import Detector, plan_execution

from .batching import BatchWorker, CoreUse
from .errors import ServiceError
from .memory import release_free_memory
from .metrics import Metrics
from .priority import call_at_lower_priority
from .schemas import DynamicAxes, ModelDescription
from .settings import Settings

logger = logging.getLogger("service.models")

WATCH_INTERVAL_S = 1.0
"""How often model files are checked when watching; a change is reloaded once it is stable for one interval."""

FileSignature = tuple[int, int, int]


def file_signature(path: Path) -> FileSignature | None:
    """(mtime_ns, size, inode) of a file, None when it does not exist: any rewrite or replacement changes it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A loaded, warmed-up version of a model, swapped in as a whole."""

    detector: Detector
    loaded_at: datetime
    output_shape: tuple[int, ...]  # one image's raw output at the default input size


@dataclass(eq=False)
class ModelEntry:
    """One named model: the version being served (if any), its state and its inference worker."""

    name: str
    path: Path
    worker: BatchWorker
    served: ServedModel | None = None
    state: Literal["loading", "ready", "failed"] = "loading"
    error: str | None = None
    loading: asyncio.Lock = field(default_factory=asyncio.Lock)
    loaded_signature: FileSignature | None = None  # the file as it was when last (re)loaded
    seen_signature: FileSignature | None = None  # the file at the last watch check

    def describe(self, default: bool) -> ModelDescription:
        served = self.served
        info = served.detector.info if served is not None else None
        return ModelDescription(
            name=self.name,
            path=str(self.path),
            default=default,
            ready=served is not None,
            state=self.state,
            error=self.error,
            loaded_at=served.loaded_at if served else None,
            classes=[info.names[i] for i in range(info.num_classes)] if info else None,
            imgsz=list(info.imgsz) if info else None,
            stride=info.stride if info else None,
            dynamic=DynamicAxes(batch=info.dynamic_batch, height_width=info.dynamic_hw) if info else None,
            batch=info.batch if info else None,
            end2end=info.end2end if info else None,
            precision=info.precision if info else None,
            architecture=info.architecture if info else None,
            attention=info.attention if info else None,
            providers=list(info.providers) if info else None,
        )


class ModelRegistry:
    """The models named in the settings, each with its own `BatchWorker`."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.default_name = settings.default_model
        self.plan = plan_execution(
            settings.instances, settings.threads, settings.device, solo_threads=settings.solo_threads
        )
        cores = CoreUse()  # the models share the cores: a solo run needs all of them idle
        self.entries: dict[str, ModelEntry] = {
            source.name: ModelEntry(
                source.name,
                source.path,
                BatchWorker(
                    source.name,
                    settings.max_batch,
                    settings.max_batch_wait_ms / 1e3,
                    settings.queue_size,
                    settings.max_imgsz**2,
                    metrics,
                    self.plan.instances,
                    settings.inference_nice,
                    cores,
                ),
            )
            for source in settings.models
        }
        metrics.registry.register(_ModelStateCollector(self))

    def get(self, name: str | None) -> ModelEntry:
        """The entry of model `name` (the default model when None); 404 listing the models when unknown."""
        if name is None:
            if self.default_name is None:
                raise ServiceError(503, "no models are configured (DETECT_MODELS)", type="no_model")
            name = self.default_name
        entry = self.entries.get(name)
        if entry is None:
            models = list(self.entries)
            raise ServiceError(
                404,
                f"unknown model {name!r}; models: {', '.join(models) or 'none'}",
                type="unknown_model",
                models=models,
            )
        return entry

    def served(self, entry: ModelEntry) -> ServedModel:
        """The version `entry` serves now; 503 while it is loading or when it failed to load."""
        served = entry.served
        if served is None:
            reason = "is still loading" if entry.state == "loading" else f"could not be loaded: {entry.error}"
            raise ServiceError(
                503, f"model {entry.name!r} {reason}", type="model_unavailable", headers={"Retry-After": "5"}
            )
        return served

    def not_ready_reasons(self) -> list[str]:
        """Why the service is not ready: models loading or failed; empty when every model serves."""
        if not self.entries:
            return ["no models are configured: DETECT_MODELS is empty and the weights folder has no *.onnx"]
        reasons = []
        for entry in self.entries.values():
            if entry.state == "loading":
                reasons.append(f"model {entry.name!r} is loading")
            elif entry.state == "failed":
                reasons.append(f"model {entry.name!r} could not be loaded: {entry.error}")
        return reasons

    async def load_all(self) -> None:
        """Load and warm up every model, one after the other, off the event loop. Failures are logged and kept."""
        for entry in self.entries.values():
            async with entry.loading:
                await self._load(entry)

    async def reload(self, name: str) -> ModelEntry:
        """Load the file of model `name` again and swap it in; on failure the served version stays (409)."""
        entry = self.get(name)
        if entry.loading.locked():
            raise ServiceError(409, f"model {name!r} is being loaded already; try again later", type="reload_running")
        async with entry.loading:
            if not await self._load(entry):
                serving = (
                    f"the version loaded at {entry.served.loaded_at.isoformat()} keeps serving"
                    if entry.served is not None
                    else "the model is not loaded"
                )
                raise ServiceError(
                    409, f"reload of model {name!r} failed: {entry.error}; {serving}", type="reload_failed"
                )
        return entry

    async def _load(self, entry: ModelEntry) -> bool:
        """Load `entry.path` in a worker thread, warm it up, then swap it in; on failure keep what was served.
        Either way the memory freed (the replaced version's, the load's own) goes back to the system."""
        try:
            return await self._swap_in(entry)
        finally:
            await anyio.to_thread.run_sync(release_free_memory)

    async def _swap_in(self, entry: ModelEntry) -> bool:
        signature = file_signature(entry.path)
        try:
            served = await anyio.to_thread.run_sync(
                call_at_lower_priority, self.settings.inference_nice, self._load_version, entry.path
            )
        except Exception as error:  # noqa: BLE001  # any failure keeps the previous version serving
            entry.error = str(error) or type(error).__name__
            entry.loaded_signature = signature
            if entry.served is None:
                entry.state = "failed"
            logger.error("model %r could not be loaded from %s: %s", entry.name, entry.path, entry.error)
            self.metrics.loads.labels(entry.name, "failed").inc()
            return False
        entry.served, entry.state, entry.error, entry.loaded_signature = served, "ready", None, signature
        info = served.detector.info
        logger.info(
            "model %r loaded from %s: %d classes, imgsz %s, %s, dynamic batch %s, providers %s, "
            "%d instances x %d threads, solo session %s",
            entry.name,
            entry.path,
            info.num_classes,
            info.imgsz,
            info.precision,
            info.dynamic_batch,
            ",".join(info.providers),
            self.plan.instances,
            self.plan.threads,
            f"{self.plan.solo_threads} threads" if self.plan.solo_threads else "none",
        )
        self.metrics.loads.labels(entry.name, "ok").inc()
        return True

    def _load_version(self, path: Path) -> ServedModel:
        """Load the ONNX and run each instance once at its default size (warm-up, and the output shape for KServe
        metadata)."""
        plan = self.plan
        detector = Detector(
            path,
            self.settings.device,
            plan.threads,
            self.settings.max_pixels,
            plan.instances,
            plan.spinning,
            self.settings.max_imgsz,
            self.settings.reduced_decoding,
            plan.solo_threads,
        )
        return ServedModel(detector, datetime.now(UTC), detector.warmup().output.shape)

    async def watch(self, interval: float = WATCH_INTERVAL_S) -> None:
        """Reload a model whose file changed, once the change has been stable for one check (runs until cancelled)."""
        for entry in self.entries.values():
            entry.seen_signature = file_signature(entry.path)
        while True:
            await asyncio.sleep(interval)
            for entry in self.entries.values():
                signature = file_signature(entry.path)
                changed, entry.seen_signature = signature != entry.seen_signature, signature
                if changed and signature is None:
                    logger.warning("model file %s disappeared; %r keeps its loaded version", entry.path, entry.name)
                if changed or signature is None or signature == entry.loaded_signature or entry.loading.locked():
                    continue
                logger.info("model file %s changed; reloading %r", entry.path, entry.name)
                with contextlib.suppress(ServiceError):  # a failed load was logged with its reason
                    await self.reload(entry.name)

    def stop(self, timeout: float) -> None:
        """Stop every worker after its queue is done."""
        for entry in self.entries.values():
            entry.worker.stop(timeout)


class _ModelStateCollector(Collector):
    """Queue depth, readiness, load time and description of each model, read at scrape time."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        depth = GaugeMetricFamily("detect_queue_depth", "Requests waiting for a model run, by model", labels=["model"])
        ready = GaugeMetricFamily("detect_model_ready", "1 when the model is loaded and serving", labels=["model"])
        loaded = GaugeMetricFamily(
            "detect_model_loaded_timestamp_seconds", "When the served version was loaded", labels=["model"]
        )
        info = InfoMetricFamily("detect_model", "The served version of each model")
        for entry in self._registry.entries.values():
            depth.add_metric([entry.name], entry.worker.depth)
            served = entry.served
            ready.add_metric([entry.name], float(served is not None))
            if served is not None:
                loaded.add_metric([entry.name], served.loaded_at.timestamp())
                model = served.detector.info
                info.add_metric(
                    [],
                    {
                        "model": entry.name,
                        "path": str(entry.path),
                        "classes": ",".join(model.names.values()),
                        "imgsz": "x".join(map(str, model.imgsz)),
                        "precision": model.precision,
                        "dynamic_batch": str(model.dynamic_batch).lower(),
                        "architecture": str(model.architecture or ""),
                        "device": served.detector.device,
                    },
                )
        yield from (depth, ready, loaded, info)
