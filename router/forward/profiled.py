"""The copy of an instance a destination's profile asks for, as segments to stream.

Any destination kind uses it the same way: :func:`send_profile` (at build time, from the
config) and :func:`rewrite_lease` (at send time, off the event loop). The result names the
new SOP Instance UID and the data set as a rewritten header, the original pixel data as a
byte range of the spooled file (or of the inline bytes), and the rewritten elements after
it: the instance is never held whole in memory. DIMSE sends :attr:`Profiled.segments`; a
kind that sends Part-10 files (STOW-RS) sends :attr:`Profiled.part10`.

With a conversion, the converted copy is rewritten (convert first, then rewrite): the
conversion reads the instance as stored and may update pixel-related attributes; the
profile comes last so that what it sets and removes is what the destination gets.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio

from router.config import Config, Destination
from router.dicom import Segment
from router.profiles import BurnedInAnnotationError, Profile, RewriteError, rewrite_part10
from router.store.queue import Lease
from router.store.spool import part10_header

__all__ = ["Profiled", "SendProfile", "rewrite_lease", "rewrite_source", "send_profile"]


@dataclass(frozen=True, slots=True)
class SendProfile:
    """A destination's profile with its key, as the kind is built with it."""

    name: str
    profile: Profile
    secret: bytes | None

    @property
    def deidentifies(self) -> bool:
        return self.profile.deidentify is not None


def send_profile(cfg: Config, dest: Destination) -> SendProfile | None:
    """The profile ``dest`` names, or None."""
    if dest.profile is None:
        return None
    entry = cfg.profiles[dest.profile]
    return SendProfile(dest.profile, entry, entry.secret)


@dataclass(frozen=True, slots=True)
class Profiled:
    """What to send instead of the stored instance."""

    sop_class_uid: str
    sop_instance_uid: str  #: after the profile: the C-STORE's and the file meta's
    transfer_syntax: str
    meta: bytes  #: preamble, "DICM" and the file meta of the rewritten instance
    segments: tuple[Segment, ...]  #: the data set, without ``meta``

    @property
    def part10(self) -> tuple[Segment, ...]:
        """The rewritten instance as a Part-10 file."""
        return (self.meta, *self.segments)

    @property
    def length(self) -> int:
        return sum(s[2] if isinstance(s, tuple) else len(s) for s in self.segments)


class Refused(Exception):
    """The profile cannot send this instance; the message is the dead letter's reason."""


def rewrite_source(profile: SendProfile, source: Path | bytes) -> Profiled:
    """The instance in ``source`` (a Part-10 file, or its bytes) rewritten by ``profile``
    (synchronous: decodes the header). Raises :class:`Refused` with the reason."""
    try:
        r = rewrite_part10(profile.profile, profile.secret, source)
    except BurnedInAnnotationError as e:
        raise Refused(f"profile {profile.name}: {e}") from None
    except RewriteError as e:
        raise Refused(f"profile {profile.name}: cannot rewrite the instance: {e}") from None
    except Exception as e:  # a sender's odd header must not stop the destination's worker
        raise Refused(
            f"profile {profile.name}: cannot rewrite the instance: {type(e).__name__}: {e}"
        ) from None
    pixels: tuple[Segment, ...] = ()
    if r.pixel_length:
        if isinstance(source, Path):
            pixels = ((source, r.pixel_offset, r.pixel_length),)
        else:
            pixels = (memoryview(source)[r.pixel_offset : r.pixel_offset + r.pixel_length],)
    segments = tuple(s for s in (r.dataset_head, *pixels, r.dataset_tail) if len(s))
    return Profiled(r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax, r.meta, segments)


async def rewrite_lease(profile: SendProfile, lease: Lease) -> Profiled:
    """:func:`rewrite_source` for a leased instance, off the event loop (the hook a
    destination kind calls). Raises :class:`Refused`."""
    return await anyio.to_thread.run_sync(functools.partial(rewrite_source, profile, lease.source))


def as_part10(data_set: Path, sop_class: str, sop_instance: str, ts: str) -> Path:
    """A Part-10 file next to ``data_set`` (a converted data set without file meta), for
    :func:`rewrite_source`; the caller removes it."""
    out = data_set.with_name(data_set.name + ".p10")
    with out.open("wb") as dst, data_set.open("rb") as src:
        dst.write(part10_header(sop_class, sop_instance, ts))
        shutil.copyfileobj(src, dst, 1 << 20)
    return out
