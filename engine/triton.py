"""Triton's model configuration for a detection ONNX, in the JSON form of ``config.pbtxt``.

One truth for the two places that describe a model to Triton clients: the KServe v2 route
``GET /v2/models/{m}/config`` of the service and the ``config.pbtxt`` of ``export --format triton``
(`detector.export` turns this dict into protobuf text with Triton's ``ModelConfig`` message).

Clients read the model's metadata from ``parameters``: one entry per `CLIENT_METADATA` key, and ``metadata``, the
Python literal of a dict, which Ultralytics' own Triton client (``YOLO("http://host:port/MODEL", task="detect")``)
evaluates for the class names, the input size and the stride.
"""

from __future__ import annotations

from typing import Any

from .model import ModelInfo

PLATFORM = "onnxruntime_onnx"
CLIENT_METADATA = ("names", "imgsz", "stride", "task", "version", "architecture")
"""The ONNX metadata a client gets in the model configuration; the rest (the training data path, description,
export arguments, ...) stays on the server."""
_DATATYPES = {"float32": "FP32", "float16": "FP16"}


def datatype(info: ModelInfo) -> str:
    """KServe v2 datatype of input and output (Ultralytics FP16 exports have FP16 input and output)."""
    return _DATATYPES[info.input_dtype]


def ultralytics_metadata(info: ModelInfo) -> dict[str, Any]:
    """The metadata dict Ultralytics' Triton client applies to its backend, as it reads an exported model's.

    The model is described as fixed-size even when its height and width are dynamic: Ultralytics' predictor takes
    ``imgsz`` from the metadata only for a fixed-size model (else it infers at its own default, 640), and letterboxes
    to that square size, which a dynamic model accepts as well.
    """
    return {
        "task": info.task,
        "stride": info.stride,
        "batch": info.batch,
        "imgsz": list(info.imgsz),
        "names": dict(info.names),
        "end2end": info.end2end,
        "args": {"dynamic": False, "batch": info.batch},
    }


def model_config(
    name: str,
    info: ModelInfo,
    input_shape: list[int],
    output_shape: list[int],
    max_batch_size: int,
    max_queue_delay_us: int = 0,
    instances: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Triton's model configuration of model `name`.

    Args:
        name: the model's name on the server.
        info: the loaded model.
        input_shape, output_shape: full tensor shapes with the batch axis first, -1 where dynamic.
        max_batch_size: most images in one run; 0 for a static-batch model, whose dims then include the batch axis.
        max_queue_delay_us: how long the first request of a batch waits for others (0: Triton's default).
        instances: model instances (``instance_group``), None to leave Triton's default.
        device: where the instances run: "cpu", "cuda" or "cuda:N".

    Examples:
        >>> config = model_config("bccd", info, [-1, 3, -1, -1], [-1, 7, -1], 8)  # doctest: +SKIP
        >>> config["parameters"]["metadata"]["string_value"]  # doctest: +SKIP
        "{'task': 'detect', 'stride': 32, 'batch': 1, 'imgsz': [320, 320], 'names': {0: 'Platelets', ...}, ...}"
    """
    data_type = f"TYPE_{datatype(info)}"
    parameters = {key: {"string_value": info.metadata[key]} for key in CLIENT_METADATA if key in info.metadata}
    parameters["metadata"] = {"string_value": repr(ultralytics_metadata(info))}
    config: dict[str, Any] = {
        "name": name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": info.input_name,
                "data_type": data_type,
                "dims": input_shape[1:] if max_batch_size else input_shape,
            }
        ],
        "output": [
            {
                "name": info.output_name,
                "data_type": data_type,
                "dims": output_shape[1:] if max_batch_size else output_shape,
            }
        ],
        "parameters": dict(sorted(parameters.items())),
    }
    if max_batch_size:
        config["dynamic_batching"] = {
            "preferred_batch_size": sorted({max(max_batch_size // 2, 1), max_batch_size}),
            "max_queue_delay_microseconds": max_queue_delay_us,
        }
    if instances is not None:
        config["instance_group"] = [{"count": instances, "kind": "KIND_CPU" if device == "cpu" else "KIND_GPU"}]
    return config
