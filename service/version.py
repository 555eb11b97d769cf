"""Name and version the service reports (KServe server metadata, OpenAPI)."""

from importlib.metadata import PackageNotFoundError, version

SERVER_NAME = "attention-yolo"

try:
    SERVER_VERSION = version(SERVER_NAME)
except PackageNotFoundError:  # running from a source tree that was never installed
    SERVER_VERSION = "0+unknown"
