"""DICOMweb (STOW-RS) destinations: the request body (multipart), the client (HTTP), and
what a response means per instance (outcome, pure). See docs/internal-apis.md."""

from router.forward.stow.client import (
    BasicAuth,
    BearerAuth,
    EchoResult,
    StowClient,
    StowConfig,
    StowConfigError,
)
from router.forward.stow.multipart import (
    MultipartBody,
    Part,
    SourceError,
    group_by_study,
    part_of,
    part_of_segments,
)
from router.forward.stow.outcome import (
    InstanceResult,
    ParsedResponse,
    StowOutcome,
    classify_response,
    parse_response,
)

__all__ = [
    "BasicAuth",
    "BearerAuth",
    "EchoResult",
    "InstanceResult",
    "MultipartBody",
    "ParsedResponse",
    "Part",
    "SourceError",
    "StowClient",
    "StowConfig",
    "StowConfigError",
    "StowOutcome",
    "classify_response",
    "group_by_study",
    "parse_response",
    "part_of",
    "part_of_segments",
]
