"""Association control (PS3.8 section 9.2), sans-I/O.

The upper-layer state machine is a table: (state, PDU type received) -> (next state,
action). The adapters feed it PDU types and perform the action it names. Acceptance
decisions (AE titles, limits) and presentation-context negotiation live here too.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from pynetdicom.presentation import (
    PresentationContext,
    negotiate_as_acceptor,
    negotiate_as_requestor,
)

from router.dicom import uids
from router.dicom.pdu import (
    A_ABORT_TYPE,
    A_ASSOCIATE_AC_TYPE,
    A_ASSOCIATE_RJ_TYPE,
    A_ASSOCIATE_RQ_TYPE,
    A_RELEASE_RP_TYPE,
    A_RELEASE_RQ_TYPE,
    P_DATA_TF_TYPE,
    AssociateRequest,
)

#: the transfer syntaxes a Verification context is accepted with
_VERIFICATION_SYNTAXES = (uids.IMPLICIT_VR_LE, uids.EXPLICIT_VR_LE, uids.EXPLICIT_VR_BE)
#: every transfer syntax pydicom knows: a storage context is accepted with the first
#: of these the requestor proposes
_TS_SET = frozenset(uids.ALL_TRANSFER_SYNTAXES)


# -- acceptance --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ: result 1 permanent / 2 transient; source 1 service user,
    2 provider (ACSE), 3 provider (presentation); reason per source (PS3.8 9.3.4).

    ``cause`` says why the router rejected, for logs and the
    ``associations_rejected_total{reason}`` label: one wire code can have several causes
    (a shutdown and a failing handler both answer a transient (2,3,1)), so the cause is
    decided where the rejection is made, not read back from the code. It takes no part
    in equality: two rejections are equal when the peer sees the same answer."""

    result: int
    source: int
    reason: int
    cause: str = field(default="other", compare=False)

    @property
    def transient(self) -> bool:
        return self.result == 2

    @classmethod
    def no_reason(cls) -> Rejection:
        return cls(1, 1, 1)

    @classmethod
    def application_context_not_supported(cls) -> Rejection:
        return cls(1, 1, 2, "application_context_not_supported")

    @classmethod
    def calling_ae_not_recognized(cls) -> Rejection:
        return cls(1, 1, 3, "calling_ae_not_recognized")

    @classmethod
    def host_not_allowed(cls) -> Rejection:
        """The calling AE title may not associate from this peer's address. On the wire
        a (1,1,3) like an unknown calling AE: PS3.8 has no reason for addresses."""
        return cls(1, 1, 3, "host_not_allowed")

    @classmethod
    def called_ae_not_recognized(cls) -> Rejection:
        return cls(1, 1, 7, "called_ae_not_recognized")

    @classmethod
    def protocol_version_not_supported(cls) -> Rejection:
        return cls(1, 2, 2, "protocol_version")

    @classmethod
    def temporary_congestion(cls) -> Rejection:
        return cls(2, 3, 1, "temporary_congestion")

    @classmethod
    def shutting_down(cls) -> Rejection:
        """The router is stopping: transient, so the sender retries (another node, or
        this one after its restart)."""
        return cls(2, 3, 1, "shutting_down")

    @classmethod
    def internal_error(cls) -> Rejection:
        """The router could not decide (its handler failed): transient, the sender
        retries, and the failure is logged with its traceback."""
        return cls(2, 3, 1, "internal_error")

    @classmethod
    def too_many_associations(cls) -> Rejection:
        """Transient, presentation provider: local limit exceeded."""
        return cls(2, 3, 2, "too_many_associations")

    def __str__(self) -> str:
        return f"result={self.result} source={self.source} reason={self.reason}"


@dataclass(frozen=True, slots=True)
class AssociationInfo:
    id: str
    calling_ae: str
    called_ae: str
    peer_host: str
    peer_port: int


def check_ae_titles(
    rq: AssociateRequest,
    ae_title: str,
    check_called_ae: bool,
    calling_ae_titles: frozenset[str] | None,
) -> Rejection | None:
    if rq.application_context != uids.APPLICATION_CONTEXT:
        return Rejection.application_context_not_supported()
    if check_called_ae and rq.called_ae != ae_title.strip():
        return Rejection.called_ae_not_recognized()
    if calling_ae_titles and rq.calling_ae not in calling_ae_titles:
        return Rejection.calling_ae_not_recognized()
    return None


def negotiate(
    proposed: Sequence[PresentationContext], accept_unknown_sop_classes: bool
) -> list[PresentationContext]:
    """Answer each proposed context: Verification and every storage SOP class (and,
    when allowed, unknown/private SOP classes), with the first proposed transfer
    syntax we support. pynetdicom's negotiate_as_acceptor does the bookkeeping; we
    call it once per proposed context so the requestor's order decides."""
    results: list[PresentationContext] = []
    for rq in proposed:
        abstract = str(rq.abstract_syntax or "")
        if not rq.transfer_syntax:
            # no transfer syntax sub-item (PS3.8 9.3.2.2 requires one or more):
            # pynetdicom's negotiation would index into the empty list; reject the
            # context, answering with a (not significant) transfer syntax
            results.append(_rejected(rq, 0x04))
            continue
        ours = PresentationContext()
        ours.abstract_syntax = abstract
        if abstract == uids.VERIFICATION:
            ours.transfer_syntax = list(_VERIFICATION_SYNTAXES)
            supported = True
        else:
            supported = abstract in uids.STORAGE_SOP_CLASSES or (
                accept_unknown_sop_classes and not uids.is_known(abstract)
            )
            ours.transfer_syntax = [str(ts) for ts in rq.transfer_syntax if str(ts) in _TS_SET] or [
                uids.IMPLICIT_VR_LE
            ]
        accepted, _roles = negotiate_as_acceptor([rq], [ours] if supported else [])
        results.extend(accepted)
    return sorted(results, key=lambda cx: int(cx.context_id or 0))


def _rejected(rq: PresentationContext, result: int) -> PresentationContext:
    cx = PresentationContext()
    cx.context_id = rq.context_id
    cx.abstract_syntax = rq.abstract_syntax
    cx.transfer_syntax = [uids.IMPLICIT_VR_LE]
    cx.result = result
    return cx


def requestor_contexts(
    contexts: Sequence[tuple[str, Sequence[str]]],
) -> list[PresentationContext]:
    """Presentation contexts to propose, odd ids from 1 (at most 128)."""
    if len(contexts) > 128:
        raise ValueError("at most 128 presentation contexts")
    out = []
    for i, (abstract, syntaxes) in enumerate(contexts):
        cx = PresentationContext()
        cx.context_id = 2 * i + 1
        cx.abstract_syntax = abstract
        cx.transfer_syntax = list(syntaxes)
        out.append(cx)
    return out


def requestor_results(
    proposed: Sequence[PresentationContext], answered: Sequence[PresentationContext]
) -> list[PresentationContext]:
    return list(negotiate_as_requestor(list(proposed), list(answered)))


# -- the state machine -------------------------------------------------------------


class State(enum.Enum):
    AWAIT_RQ = "awaiting A-ASSOCIATE-RQ"  # acceptor, transport open (Sta2)
    AWAIT_AC = "awaiting A-ASSOCIATE-AC/RJ"  # requestor (Sta5)
    ESTABLISHED = "established"  # Sta6
    AWAIT_RELEASE_RP = "awaiting A-RELEASE-RP"  # we asked to release (Sta7)
    CLOSED = "closed"


class Action(enum.Enum):
    ASSOCIATE_RQ = "evaluate the A-ASSOCIATE-RQ"
    ASSOCIATE_AC = "association accepted by the peer"
    ASSOCIATE_RJ = "association rejected by the peer"
    P_DATA = "process P-DATA-TF"
    RELEASE_RQ = "peer asks to release: answer A-RELEASE-RP and close"
    RELEASE_RP = "release confirmed: close"
    ABORTED = "peer aborted: close"
    PROTOCOL_ERROR = "unexpected PDU: send A-ABORT and close"


_TABLE: dict[tuple[State, int], tuple[State, Action]] = {
    (State.AWAIT_RQ, A_ASSOCIATE_RQ_TYPE): (State.ESTABLISHED, Action.ASSOCIATE_RQ),
    (State.AWAIT_RQ, A_ABORT_TYPE): (State.CLOSED, Action.ABORTED),
    (State.AWAIT_AC, A_ASSOCIATE_AC_TYPE): (State.ESTABLISHED, Action.ASSOCIATE_AC),
    (State.AWAIT_AC, A_ASSOCIATE_RJ_TYPE): (State.CLOSED, Action.ASSOCIATE_RJ),
    (State.AWAIT_AC, A_ABORT_TYPE): (State.CLOSED, Action.ABORTED),
    (State.ESTABLISHED, P_DATA_TF_TYPE): (State.ESTABLISHED, Action.P_DATA),
    (State.ESTABLISHED, A_RELEASE_RQ_TYPE): (State.CLOSED, Action.RELEASE_RQ),
    (State.ESTABLISHED, A_ABORT_TYPE): (State.CLOSED, Action.ABORTED),
    # after our A-RELEASE-RQ the peer may still send P-DATA it had in flight
    (State.AWAIT_RELEASE_RP, P_DATA_TF_TYPE): (State.AWAIT_RELEASE_RP, Action.P_DATA),
    (State.AWAIT_RELEASE_RP, A_RELEASE_RP_TYPE): (State.CLOSED, Action.RELEASE_RP),
    # release collision: answer and close
    (State.AWAIT_RELEASE_RP, A_RELEASE_RQ_TYPE): (State.CLOSED, Action.RELEASE_RQ),
    (State.AWAIT_RELEASE_RP, A_ABORT_TYPE): (State.CLOSED, Action.ABORTED),
}


class Machine:
    """Upper-layer state: events (PDU types received, our own requests) in, actions out."""

    __slots__ = ("state",)

    def __init__(self, state: State) -> None:
        self.state = state

    def receive(self, pdu_type: int) -> Action:
        try:
            self.state, action = _TABLE[(self.state, pdu_type)]
        except KeyError:
            self.state = State.CLOSED
            return Action.PROTOCOL_ERROR
        return action

    def rejected(self) -> None:
        """We answered A-ASSOCIATE-RJ."""
        self.state = State.CLOSED

    def release_requested(self) -> None:
        if self.state is not State.ESTABLISHED:
            raise RuntimeError(f"cannot release in state {self.state.value}")
        self.state = State.AWAIT_RELEASE_RP

    def aborted(self) -> None:
        self.state = State.CLOSED

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED
