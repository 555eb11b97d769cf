"""Loading a detection ONNX exported by Ultralytics: session, metadata and shape checks."""

from __future__ import annotations

import ast
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from .errors import DeviceError, InvalidParameter, ModelError

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class ModelInfo:
    """What the engine knows about a loaded model.

    `imgsz` is the default inference size (height, width): the fixed input size of a static
    model, or the export size recorded in the metadata of a dynamic one.
    """

    path: str
    names: dict[int, str]
    task: str
    stride: int
    imgsz: tuple[int, int]
    dynamic_batch: bool
    dynamic_hw: bool
    batch: int  # fixed batch size of a static-batch model; 1 for a dynamic one
    end2end: bool  # output (B, N, 6) boxes already through NMS
    input_name: str
    input_dtype: str  # "float32" or "float16"
    output_name: str
    precision: str  # from the export args: "fp32", "fp16", "int8" or the exporter's own quantize value
    providers: tuple[str, ...]
    version: str | None = None
    description: str | None = None
    architecture: Any = None
    data: Any = None
    attention: Any = None
    args: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)  # every metadata_props entry, unparsed

    @property
    def num_classes(self) -> int:
        return len(self.names)


def physical_cores() -> int:
    """Physical CPU cores this process may use: affinity mask, SMT siblings counted once, cgroup quota applied."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    count = len(cores)
    try:  # cgroup v2 CPU quota, e.g. "200000 100000" for 2 CPUs in a container
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(count, 1)


MAX_AUTO_INSTANCES = 8  # model instances when chosen: each holds a session (its weights and arena)
MAX_AUTO_THREADS = 4  # intra-op threads per instance when chosen: a small detector scales little beyond


@dataclass(frozen=True)
class ExecutionPlan:
    """How a model uses the CPU: `instances` sessions run at once, each with `threads` intra-op threads, and a
    run that has the model to itself may use `solo_threads`.

    Attributes:
        instances: concurrent model runs (Triton's ``instance_group.count``), one session each.
        threads: ONNX Runtime intra-op threads of each session.
        spinning: whether intra-op threads busy-wait for work during a run (ONNX Runtime's default); only where the
            instances' threads leave cores over, since a spinning thread takes a core from other work.
        solo_threads: intra-op threads of one more session, for a run that starts while no other run goes and no
            request waits: a lone request uses the cores that the instances share under load. 0: no such session.
    """

    instances: int
    threads: int
    spinning: bool
    solo_threads: int = 0


def plan_execution(
    instances: int = 0, threads: int = 0, device: str = "cpu", cores: int | None = None, solo_threads: int = 0
) -> ExecutionPlan:
    """Instances and intra-op threads for a model, each chosen from the cores the process may use when 0.

    On CPU one single-threaded instance runs per core, up to `MAX_AUTO_INSTANCES`; beyond that the instances share
    the cores as threads (up to `MAX_AUTO_THREADS` each): on 2 cores 2 x 1, on 8 cores 8 x 1, on 32 cores 8 x 4.
    Under load that keeps every core on a run of its own, which intra-op threads would only share. A lone request
    is another matter (the shipped model on 2 cores: 1 thread 23.5 ms, 2 spinning 16.7 ms, 2 not spinning 19.3 ms),
    so where the instances have fewer threads than `MAX_AUTO_THREADS` and the cores allow more, a solo session of
    spinning threads takes the runs that start alone. Asked-for instances get the cores between them. A CUDA
    device gets one instance (its kernels queue on the GPU anyway) and no solo session.

    Examples:
        >>> plan_execution(cores=2)
        ExecutionPlan(instances=2, threads=1, spinning=False, solo_threads=2)
        >>> plan_execution(cores=32)
        ExecutionPlan(instances=8, threads=4, spinning=False, solo_threads=0)
        >>> plan_execution(instances=1, cores=4)
        ExecutionPlan(instances=1, threads=4, spinning=False, solo_threads=0)
        >>> plan_execution(instances=1, threads=2, cores=4)
        ExecutionPlan(instances=1, threads=2, spinning=True, solo_threads=0)
        >>> plan_execution(instances=2, threads=1, cores=8, solo_threads=6)
        ExecutionPlan(instances=2, threads=1, spinning=True, solo_threads=6)
    """
    if min(instances, threads, solo_threads) < 0:
        raise InvalidParameter(
            f"instances, threads and solo_threads must be >= 0 (0 = chosen), got {instances}, {threads} and "
            f"{solo_threads}"
        )
    cores = cores or physical_cores()
    if device != "cpu":
        instances = instances or 1
        threads = threads or max(1, min(cores // instances, MAX_AUTO_THREADS))
        return ExecutionPlan(instances, threads, spinning=instances * threads < cores)
    if not threads:
        share = cores // instances if instances else cores // MAX_AUTO_INSTANCES
        threads = max(1, min(MAX_AUTO_THREADS, share))
    instances = instances or max(1, min(MAX_AUTO_INSTANCES, cores // threads))
    if not solo_threads:
        solo_threads = min(cores, MAX_AUTO_THREADS)
    solo = solo_threads if instances > 1 and solo_threads > threads else 0
    return ExecutionPlan(instances, threads, spinning=instances * threads < cores, solo_threads=solo)


def create_session(
    path: str | Path, device: str = "cpu", threads: int | None = None, spinning: bool = True
) -> ort.InferenceSession:
    """Create an ONNX Runtime session: full graph optimisation, sequential execution, one inter-op thread, no
    memory patterns.

    Args:
        path: ONNX file.
        device: "cpu", or "cuda" / "cuda:N" for CUDAExecutionProvider (with CPU fallback for unsupported ops).
        threads: intra-op threads; default `physical_cores()`.
        spinning: let idle intra-op threads busy-wait for the next piece of work (``session.intra_op.allow_spinning``)
            while a run goes on; they stop as the run ends (``session.force_spinning_stop``), so between runs they
            take no core. Turn it off when other threads need the same cores during runs.
    """
    match = _DEVICE_PATTERN.match(device)
    if match is None:
        raise DeviceError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if threads is not None and threads < 1:
        raise InvalidParameter(f"threads must be >= 1, got {threads}")
    providers: list[Any] = ["CPUExecutionProvider"]
    if match.group(1) == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise DeviceError(
                f"device {device!r} needs ONNX Runtime's CUDAExecutionProvider (install onnxruntime-gpu); "
                f"available providers: {', '.join(available)}"
            )
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(match.group(2) or 0)}))
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    # A memory pattern is planned and kept per input shape: with dynamic sizes it only accumulates (no faster here).
    options.enable_mem_pattern = False
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # noqa: BLE001  # ONNX Runtime raises private, unrelated types for bad files
        raise ModelError(f"{path} is not a loadable ONNX model: {error}") from None
    if match.group(1) == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise DeviceError(f"CUDAExecutionProvider failed to start for {device!r}; check the CUDA and cuDNN libraries")
    return session


def read_model_info(session: ort.InferenceSession, path: str | Path) -> ModelInfo:
    """Parse the Ultralytics metadata and check the graph is a detector the engine can run."""
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    if "names" not in metadata:
        raise ModelError(f"{path} has no 'names' metadata: it is not an ONNX exported by Ultralytics")
    task = metadata.get("task")
    if task != "detect":
        raise ModelError(f"{path} is a {task!r} model; the engine runs only 'detect' models")
    names = _parse_names(metadata["names"], path)
    args = _parse_literal(metadata.get("args", "{}"), "args", path)
    if not isinstance(args, dict):
        raise ModelError(f"{path} metadata 'args' is not a dict: {metadata['args']!r}")
    end2end = bool(_parse_literal(metadata.get("end2end", "False"), "end2end", path) or args.get("nms"))
    stride = int(_parse_literal(metadata.get("stride", "32"), "stride", path))

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} inputs; a detector has exactly one image input")
    image_input, output = inputs[0], outputs[0]
    batch, channels, height, width = _input_shape(image_input, path)
    if channels != 3:
        raise ModelError(f"{path} expects {channels}-channel input; the engine feeds 3-channel RGB")
    if image_input.type not in ("tensor(float)", "tensor(float16)"):
        raise ModelError(f"{path} input is {image_input.type}; expected a float32 or float16 tensor")
    _check_output(output.shape, len(names), end2end, path)

    dynamic_hw = not isinstance(height, int)
    if dynamic_hw:
        exported = _parse_literal(metadata.get("imgsz", "640"), "imgsz", path)
        size = max(exported) if isinstance(exported, (list, tuple)) else int(exported)
        imgsz = (size, size)
    else:
        imgsz = (height, width)
    return ModelInfo(
        path=str(path),
        names=names,
        task=task,
        stride=stride,
        imgsz=imgsz,
        dynamic_batch=not isinstance(batch, int),
        dynamic_hw=dynamic_hw,
        batch=batch if isinstance(batch, int) else 1,
        end2end=end2end,
        input_name=image_input.name,
        input_dtype="float16" if image_input.type == "tensor(float16)" else "float32",
        output_name=output.name,
        precision=_precision(args),
        providers=tuple(session.get_providers()),
        version=metadata.get("version"),
        description=metadata.get("description"),
        architecture=_parse_optional(metadata.get("architecture")),
        data=_parse_optional(metadata.get("data")),
        attention=_parse_optional(metadata.get("attention")),
        args=args,
        metadata=metadata,
    )


def _input_shape(image_input: Any, path: str | Path) -> tuple[Any, Any, Any, Any]:
    shape = image_input.shape
    if len(shape) != 4:
        raise ModelError(f"{path} input has shape {shape}; expected (batch, 3, height, width)")
    batch, channels, height, width = shape
    if isinstance(height, int) != isinstance(width, int):
        raise ModelError(f"{path} input has shape {shape}; height and width must be both fixed or both dynamic")
    return batch, channels, height, width


def _check_output(shape: list[Any], num_classes: int, end2end: bool, path: str | Path) -> None:
    expected = (
        "(batch, boxes, 6)" if end2end else f"(batch, {4 + num_classes}, anchors) = (batch, 4 + classes, anchors)"
    )
    if len(shape) != 3 or shape[-1 if end2end else 1] != (6 if end2end else 4 + num_classes):
        kind = "end-to-end" if end2end else f"{num_classes}-class"
        raise ModelError(f"{path} output has shape {shape}; a {kind} detector outputs {expected}")


def _parse_literal(text: str, key: str, path: str | Path) -> Any:
    """Parse a metadata value written as a Python literal (Ultralytics writes `str(value)`); never evaluates code."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ModelError(f"{path} metadata {key!r} is not a valid literal: {text[:200]!r}") from None


def _parse_names(text: str, path: str | Path) -> dict[int, str]:
    names = _parse_literal(text, "names", path)
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if (
        not isinstance(names, dict)
        or not names
        or not all(isinstance(class_id, int) for class_id in names)
        or sorted(names) != list(range(len(names)))
        or not all(isinstance(name, str) for name in names.values())
    ):
        raise ModelError(f"{path} metadata 'names' must map class ids 0..n-1 to strings, got {text[:200]!r}")
    return dict(sorted(names.items()))


def _parse_optional(text: str | None) -> Any:
    """Parse an optional metadata value as JSON, then as a Python literal, else keep the raw string."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def _precision(args: dict[str, Any]) -> str:
    """Export precision from the args: Ultralytics >= 8.4 writes `quantize`, older versions `half`/`int8`."""
    quantize = args.get("quantize")
    if quantize in (8, "8", "int8") or args.get("int8"):
        return "int8"
    if quantize in (16, "16", "fp16") or args.get("half"):
        return "fp16"
    if quantize in (None, 32, "32", "fp32"):
        return "fp32"
    return str(quantize)
