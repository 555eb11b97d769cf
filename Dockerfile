# syntax=docker/dockerfile:1
# Image of the REST detection service (`python -m service`): ONNX Runtime, OpenCV, FastAPI; no torch, no
# ultralytics, no compilers. Two final stages; docs/DEPLOY.md explains both.
#   CPU (default target):  docker build -t attention-yolo-service .
#   NVIDIA GPU:            docker build --target gpu -t attention-yolo-service:gpu .
# Models: the repository's weights/*.onnx are copied to /app/weights; mount your own over it
# (docker run -v "$PWD/my-models:/app/weights:ro" ...) and name them with DETECT_MODELS if needed.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
# build: the service-only install of this repository (`pip install .` without extras) in /opt/venv, as an editable
# install of /app: the code stays in /app/engine and /app/service, next to /app/weights, where the service looks
# for its default models, and the package metadata (version) is installed. Dependencies first, so code changes reuse
# their layer.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml ./
# Optional secrets for builds behind a proxy or a private index (deploy/build-image.sh passes the host's): pip.conf is
# mounted as /etc/pip.conf, and the CA bundle it names, for these RUN steps only; neither stays in any image.
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-ca \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
# setuptools' package discovery finds `engine` and `service` alone here; the `attention-yolo` command needs the training
# packages, which the image does not have, so it goes.
COPY engine/ engine/
COPY service/ service/
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-ca \
    pip install --no-deps -e . \
    && rm -f /opt/venv/bin/attention-yolo \
    && python -c "import service.app"

# build-cpu: that environment without pip and setuptools, which the service never uses, and without the packages' own
# test suites (NumPy's are 17 MB): about 40 MB less in the CPU image (docs/DEPLOY.md). build-gpu keeps pip to swap
# onnxruntime.
FROM build AS build-cpu
RUN pip uninstall -y -q pip setuptools \
    && find /opt/venv/lib -depth -type d -path "*/site-packages/*" \( -name tests -o -name test \) -exec rm -rf {} + \
    && python -c "import service.app"

# build-gpu: the same environment with onnxruntime-gpu in place of onnxruntime (both provide the `onnxruntime`
# module, so they must never be installed together) and the CUDA and cuDNN libraries it declares, from PyPI.
# onnxruntime-gpu >= 1.27 on PyPI is built for CUDA 13.x and cuDNN 9.x (1.19-1.26: CUDA 12.x); the host needs
# an NVIDIA driver for that CUDA major (CUDA 13: driver >= 580) and the NVIDIA Container Toolkit.
FROM build AS build-gpu
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-ca \
    pip uninstall -y onnxruntime \
    && pip install "onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_GPU_VERSION}" \
    && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()"

# ---------------------------------------------------------------------------------------------------------------
# runtime: what both final images share.
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DETECT_HOST=0.0.0.0 \
    DETECT_PORT=8000 \
    DETECT_LOG_FORMAT=json \
    DETECT_GRACEFUL_TIMEOUT_S=30
# The final stages switch to it by number, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 detect \
    && useradd --system --uid 10001 --gid detect --home-dir /app --no-create-home --shell /usr/sbin/nologin detect
WORKDIR /app
# Root-owned, so read-only for the service user: models, probe and code cannot be changed at run time.
COPY weights/*.onnx /app/weights/
COPY deploy/healthcheck.py /app/healthcheck.py
COPY engine/ /app/engine/
COPY service/ /app/service/
# Bytecode compiled now: the service user cannot write it (and compose mounts the root filesystem read-only).
RUN python -m compileall -q /app/engine /app/service
EXPOSE 8000
# uvicorn drains in-flight requests on SIGTERM for up to DETECT_GRACEFUL_TIMEOUT_S; give the container longer
# than that before SIGKILL (`docker run --stop-timeout 35`, compose `stop_grace_period: 35s`).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "/healthz"]
CMD ["python", "-m", "service"]

# gpu: `docker build --target gpu`; run with GPUs (`docker run --gpus all`, or the compose `gpu` profile).
FROM runtime AS gpu
COPY --from=build-gpu /opt/venv /opt/venv
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Make the pip-installed CUDA/cuDNN libraries visible to the dynamic loader (ONNX Runtime dlopens cuDNN and cuFFT),
# then fail the build if the CUDA provider has an unresolved dependency other than the driver's libcuda.so.1,
# which the NVIDIA Container Toolkit mounts from the host when the container starts.
RUN find /opt/venv -type d -path "*/site-packages/nvidia/*/lib" | sort > /etc/ld.so.conf.d/onnxruntime-cuda.conf \
    && ldconfig \
    && provider="$(python -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so")')" \
    && missing="$(ldd "$provider" | grep 'not found' | grep -v 'libcuda\.so\.1' || true)" \
    && if [ -n "$missing" ]; then echo "unresolved CUDA provider dependencies:"; echo "$missing"; exit 1; fi \
    && ldconfig -p | grep 'libcudnn\.so\.9 ' >/dev/null
ENV DETECT_DEVICE=cuda \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001

# cpu: the default target (last stage).
FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
ENV DETECT_DEVICE=cpu
USER 10001:10001
