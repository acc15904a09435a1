"""The router's DICOM vocabulary: the UIDs it names, and lookups by name and keyword.

Every UID literal the router uses lives here, and every lookup in the UID registry goes
through these functions, which use only the public APIs of pydicom (``pydicom.uid``) and
pynetdicom (its storage presentation contexts). Modules elsewhere import names from here
instead of spelling ``1.2.840.10008...`` themselves.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Final

import pydicom.uid
from pydicom.uid import UID
from pynetdicom import AllStoragePresentationContexts

# -- the router's own identity (associations and the spool's Part-10 file meta) -----------

#: One Implementation Class UID for everything the router writes: the A-ASSOCIATE user
#: information and the file meta of spooled Part-10 files. A UUID-derived 2.25 UID (uuid5 of
#: "dicom-router"), so it needs no registered root.
IMPLEMENTATION_CLASS_UID: Final = "2.25.314613668527291709468301249921212548755"
#: Implementation Version Name (at most 16 characters, PS3.7 D.3.3.2.3)
IMPLEMENTATION_VERSION_NAME: Final = "DICOM_ROUTER_01"

# -- services and contexts -------------------------------------------------------------------

APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"  # DICOM Application Context Name
VERIFICATION: Final = "1.2.840.10008.1.1"  # Verification SOP Class (C-ECHO)
CT_IMAGE_STORAGE: Final = str(pydicom.uid.CTImageStorage)

# -- transfer syntaxes -----------------------------------------------------------------------

IMPLICIT_VR_LE: Final = str(pydicom.uid.ImplicitVRLittleEndian)
EXPLICIT_VR_LE: Final = str(pydicom.uid.ExplicitVRLittleEndian)
DEFLATED_EXPLICIT_VR_LE: Final = str(pydicom.uid.DeflatedExplicitVRLittleEndian)
EXPLICIT_VR_BE: Final = str(pydicom.uid.ExplicitVRBigEndian)
RLE_LOSSLESS: Final = str(pydicom.uid.RLELossless)
JPEG_LS_LOSSLESS: Final = str(pydicom.uid.JPEGLSLossless)
JPEG_2000_LOSSLESS: Final = str(pydicom.uid.JPEG2000Lossless)
DEFLATED_IMAGE_FRAME: Final = "1.2.840.10008.1.2.8.1"  # Deflated Image Frame Compression
JPIP_REFERENCED_DEFLATE: Final = "1.2.840.10008.1.2.4.95"  # JPIP Referenced Deflate

#: the DCT JPEG processes (PS3.5 A.4.1; all but .50 and .51 retired): an image coded
#: with one of them has lost information for good
JPEG_DCT_SYNTAXES: Final = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 and 4)
        "1.2.840.10008.1.2.4.52",  # JPEG Extended (Process 3 and 5)
        "1.2.840.10008.1.2.4.53",  # JPEG Spectral Selection, Non-Hierarchical (6 and 8)
        "1.2.840.10008.1.2.4.54",  # JPEG Spectral Selection, Non-Hierarchical (7 and 9)
        "1.2.840.10008.1.2.4.55",  # JPEG Full Progression, Non-Hierarchical (10 and 12)
        "1.2.840.10008.1.2.4.56",  # JPEG Full Progression, Non-Hierarchical (11 and 13)
        "1.2.840.10008.1.2.4.59",  # JPEG Extended, Hierarchical (16 and 18)
        "1.2.840.10008.1.2.4.60",  # JPEG Extended, Hierarchical (17 and 19)
        "1.2.840.10008.1.2.4.61",  # JPEG Spectral Selection, Hierarchical (20 and 22)
        "1.2.840.10008.1.2.4.62",  # JPEG Spectral Selection, Hierarchical (21 and 23)
        "1.2.840.10008.1.2.4.63",  # JPEG Full Progression, Hierarchical (24 and 26)
        "1.2.840.10008.1.2.4.64",  # JPEG Full Progression, Hierarchical (25 and 27)
    }
)

#: syntaxes whose coding may lose information: the DCT JPEG processes, the near-lossless
#: and lossy-or-lossless JPEG-LS, JPEG 2000 and HTJ2K ones, and the video syntaxes
LOSSY_TRANSFER_SYNTAXES: Final = JPEG_DCT_SYNTAXES | frozenset(
    str(ts)
    for ts in (
        pydicom.uid.JPEGLSNearLossless,
        pydicom.uid.JPEG2000,
        pydicom.uid.JPEG2000MC,
        pydicom.uid.HTJ2K,
        pydicom.uid.MPEG2MPML,
        pydicom.uid.MPEG2MPMLF,
        pydicom.uid.MPEG2MPHL,
        pydicom.uid.MPEG2MPHLF,
        pydicom.uid.MPEG4HP41,
        pydicom.uid.MPEG4HP41F,
        pydicom.uid.MPEG4HP41BD,
        pydicom.uid.MPEG4HP41BDF,
        pydicom.uid.MPEG4HP422D,
        pydicom.uid.MPEG4HP422DF,
        pydicom.uid.MPEG4HP423D,
        pydicom.uid.MPEG4HP423DF,
        pydicom.uid.MPEG4HP42STEREO,
        pydicom.uid.MPEG4HP42STEREOF,
        pydicom.uid.HEVCMP51,
        pydicom.uid.HEVCM10P51,
    )
)

#: lossless compressed syntaxes the router decodes but never encodes
OTHER_LOSSLESS_SYNTAXES: Final = frozenset(
    str(ts)
    for ts in (
        pydicom.uid.JPEGLossless,  # Non-Hierarchical (Process 14)
        pydicom.uid.JPEGLosslessSV1,  # First-Order Prediction (Process 14 SV1)
        pydicom.uid.HTJ2KLossless,
        pydicom.uid.HTJ2KLosslessRPCL,
    )
)

#: every transfer syntax pydicom knows, in pydicom's order
ALL_TRANSFER_SYNTAXES: Final[tuple[str, ...]] = tuple(
    str(ts) for ts in pydicom.uid.AllTransferSyntaxes
)


#: Retired storage SOP classes (PS3.6 Annex A) that older modalities still send (the old
#: Ultrasound and Nuclear Medicine classes above all). pydicom knows their names but
#: publishes no constant for them, so they are listed here.
RETIRED_STORAGE_SOP_CLASSES: Final = frozenset(
    {
        "1.2.840.10008.5.1.1.27",  # Stored Print Storage
        "1.2.840.10008.5.1.1.29",  # Hardcopy Grayscale Image Storage
        "1.2.840.10008.5.1.1.30",  # Hardcopy Color Image Storage
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (retired)
        "1.2.840.10008.5.1.4.1.1.5",  # Nuclear Medicine Image Storage (retired)
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (retired)
        "1.2.840.10008.5.1.4.1.1.8",  # Standalone Overlay Storage
        "1.2.840.10008.5.1.4.1.1.9",  # Standalone Curve Storage
        "1.2.840.10008.5.1.4.1.1.9.1",  # Waveform Storage - Trial
        "1.2.840.10008.5.1.4.1.1.10",  # Standalone Modality LUT Storage
        "1.2.840.10008.5.1.4.1.1.11",  # Standalone VOI LUT Storage
        "1.2.840.10008.5.1.4.1.1.12.3",  # X-Ray Angiographic Bi-Plane Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1",  # VL Image Storage - Trial
        "1.2.840.10008.5.1.4.1.1.77.2",  # VL Multi-frame Image Storage - Trial
        "1.2.840.10008.5.1.4.1.1.88.1",  # Text SR Storage - Trial
        "1.2.840.10008.5.1.4.1.1.88.2",  # Audio SR Storage - Trial
        "1.2.840.10008.5.1.4.1.1.88.3",  # Detail SR Storage - Trial
        "1.2.840.10008.5.1.4.1.1.88.4",  # Comprehensive SR Storage - Trial
        "1.2.840.10008.5.1.4.1.1.129",  # Standalone PET Curve Storage
        "1.2.840.10008.5.1.4.34.1",  # RT Beams Delivery Instruction Storage - Trial
    }
)


@cache
def _registry() -> frozenset[str]:
    """Every UID that pydicom and pynetdicom publish as a named constant."""
    import pynetdicom.sop_class

    found: set[str] = set()
    for module in (pydicom.uid, pynetdicom.sop_class):
        for attr in dir(module):
            value = getattr(module, attr)
            if not attr.startswith("_") and isinstance(value, UID):
                found.add(str(value))
    found.update(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
    found.update(RETIRED_STORAGE_SOP_CLASSES)
    return frozenset(found)


def _is_storage(uid: str) -> bool:
    u = UID(uid)
    return u.type == "SOP Class" and "Storage" in u.name and "Commitment" not in u.name


#: every storage SOP class in pynetdicom's storage contexts and the published registry
STORAGE_SOP_CLASSES: Final[frozenset[str]] = frozenset(
    {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax}
    | {uid for uid in _registry() if _is_storage(uid)}
)


# -- lookups ---------------------------------------------------------------------------------


def is_known(uid: str) -> bool:
    """A UID of the registry (PS3.6 Annex A) or a storage SOP class pynetdicom knows."""
    return bool(UID(uid).type) or uid in STORAGE_SOP_CLASSES


def name(uid: str) -> str | None:
    """``CT Image Storage`` for ``1.2.840.10008.5.1.4.1.1.2``; None when unknown."""
    u = UID(uid)
    return str(u.name) if u.type else None


def keyword(uid: str) -> str | None:
    """``CTImageStorage`` for ``1.2.840.10008.5.1.4.1.1.2``; None when unknown or blank."""
    return str(UID(uid).keyword) or None


def label(uid: str) -> str:
    """``1.2.840.10008.5.1.4.1.1.2 (CT Image Storage)``, or the UID alone."""
    known = name(uid)
    return f"{uid} ({known})" if known else uid


@cache
def _by_keyword() -> dict[str, str]:
    return {kw: uid for uid in _registry() if (kw := keyword(uid))}


@cache
def _by_name() -> dict[str, str]:
    # A few current storage classes share their name with a retired one (Ultrasound Image
    # Storage is 1.2.840.10008.5.1.4.1.1.6.1 and, retired, ...6): the name means the
    # current class, whatever order the registry set iterates in.
    out: dict[str, str] = {}
    for uid in sorted(_registry(), key=lambda u: (UID(u).is_retired, u)):
        if n := name(uid):
            out.setdefault(n.lower(), uid)
    return out


def lookup(text: str) -> str | None:
    """The dotted UID that ``text`` names: a UID keyword (``CTImageStorage``, exact case)
    or a UID name (``CT Image Storage``, any case); None when it names none."""
    return _by_keyword().get(text) or _by_name().get(text.strip().lower())


def is_valid(uid: str) -> bool:
    """A syntactically valid UID (PS3.5 9.1: digits and dots, at most 64 characters)."""
    return bool(_UID_SYNTAX.fullmatch(uid)) and len(uid) <= 64


_UID_SYNTAX: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
