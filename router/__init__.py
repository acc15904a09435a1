"""dicom-router: a durable, asynchronous DICOM store-and-forward router."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dicom-router")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
