"""Fault matrix, hostile or broken content (cases 6, 11, 12, 14): the router
process answers each C-STORE with a DIMSE status, keeps the association and the server
up, writes nothing outside storage/ and names every file itself."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from router.samples import write_dataset
from tests.faults.faultlib import (
    A_ASSOCIATE_AC,
    CT,
    EXPLICIT,
    IMPLICIT,
    MR,
    RawPeer,
    context_results,
    dataset,
    dest,
    down_port,
    echo_ok,
    instance_count,
    make_router,
    partials,
    spool_files,
    tree,
)
from tests.integration.peers import dataset_bytes, running, start_storescp, wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")

UID_64 = "1.2.826.0.1.3680043.8.498." + "1" * 38  # exactly 64 characters
assert len(UID_64) == 64

HOSTILE_UIDS = {
    "dotdot": "../../etc/x",
    "absolute": "/abs",
    "absolute_deep": "/tmp/dicom-router-fault-6/x.dcm",
    "too_long": UID_64 + ".1",
    "letters": "1.2.840.ABC.5",
    "spaces_inside": "1.2.3 4.5",
    "backslash": "1.2\\3.4",
    "newline": "1.2.3\n4",
    "empty": "",
}


def _storage_names_are_ours(storage: Path) -> None:
    for rel in tree(storage):
        name = Path(rel).name
        assert (
            rel in ("tmp", "spool", "router.lock")
            or name.startswith("queue.db")
            or re.fullmatch(r"spool/[0-9a-f]{2}", rel)
            or re.fullmatch(r"spool/[0-9a-f]{2}/[0-9a-f]{24}\.dcm", rel)
        ), rel


def test_6_hostile_sop_instance_uids_refused_nothing_outside_storage(tmp_path: Path) -> None:
    """Case 6: a SOP Instance UID that is a path, too long or not a UID, in the command
    set and the data set alike, is refused with C000 ("invalid SOP Instance UID") on an
    association that goes on; a valid 64-character UID is stored under the router's own
    name and forwarded byte for byte. Nothing is written outside storage/."""
    pacs = start_storescp(tmp_path / "pacs", "PACS")
    try:
        router = make_router(tmp_path, {"pacs": dest("PACS", pacs.port)})
        before = tree(tmp_path) - {"router.log"}
        with running(router), RawPeer(router.port) as peer:
            peer.established()
            for i, (name, uid) in enumerate(HOSTILE_UIDS.items()):
                status, comment = peer.store(CT, uid, dataset(CT, uid), mid=i + 1)
                assert status == 0xC000, (name, hex(status))
                assert comment == "invalid SOP Instance UID", (name, comment)
            # a non-ASCII byte in the command set's UID (sent raw, not through str)
            cmd = bytearray(peer_command := _command_with_raw_uid(b"1.2.3\xff.4"))
            peer.send(bytes(cmd))
            peer.data(dataset(CT, b"1.2.3\xff.4"))
            assert int(peer.response().get("Status")) == 0xC000, peer_command[:8]
            good = peer.store(CT, UID_64, dataset(CT, UID_64), mid=99)
            assert good == (0, ""), good
            peer.release()
            got = pacs.wait_files(1)
            assert (
                router.metric("dicom_router_store_responses_total", status="c000")
                == len(HOSTILE_UIDS) + 1
            )
            assert echo_ok(router.port)
            wait_for(lambda: instance_count(router) == 0, 30, "the delivery to end")
        assert dataset_bytes(got[0]) == dataset(CT, UID_64)  # forwarded unchanged
        assert UID_64 in got[0].name  # the destination got the UID itself
        after = tree(tmp_path) - {"router.log"}
        new = {p for p in after - before if not p.startswith(("storage", "pacs"))}
        assert new == set(), new
        _storage_names_are_ours(router.storage)
        assert not Path("/tmp/dicom-router-fault-6").exists()
    finally:
        pacs.stop()


def _command_with_raw_uid(uid: bytes) -> bytes:
    """A C-STORE-RQ command set with ``uid`` as raw bytes, in one P-DATA-TF PDU."""
    from router.dicom import dimse, pdu

    cmd = dimse.store_rq(1, CT, "9" * len(uid))
    cmd = cmd.replace(b"9" * len(uid), uid)
    return bytes(pdu.pdata_pdus(1, cmd, 16384, pdu.COMMAND, True))


def test_11_command_set_uids_differ_from_the_data_set_a900(tmp_path: Path) -> None:
    """Case 11: the documented answer is A900 (refused, nothing stored) when the data
    set's SOP Instance UID or SOP Class UID differs from the command set's, or the
    command set's SOP Class UID differs from its presentation context's."""
    router = make_router(tmp_path, {"pacs": dest("PACS", down_port())})
    a, b = generate_uid(), generate_uid()
    with running(router), RawPeer(router.port) as peer:
        peer.established(contexts=((CT, (EXPLICIT,)), (MR, (EXPLICIT,))))
        assert peer.store(CT, a, dataset(CT, b))[0] == 0xA900  # instance UID differs
        assert peer.store(CT, a, dataset(MR, a))[0] == 0xA900  # data set says MR
        status, comment = peer.store(MR, a, dataset(MR, a), ctx=1)  # MR on the CT context
        assert status == 0xA900 and "presentation context" in comment, (status, comment)
        assert peer.store(MR, a, dataset(MR, a), ctx=3) == (0, "")  # all agree: stored
        peer.release()
        # the ingest counts two; the third is refused by the DICOM layer before it
        assert router.metric("dicom_router_store_responses_total", status="a900") >= 2
    assert instance_count(router) == 1
    assert not partials(router)


def _truncated_cases() -> dict[str, bytes]:
    uid = "1.2.826.0.1.3680043.8.498.1200"
    whole = dataset(CT, uid, pixels=600_000)
    header_end = whole.index(struct.pack("<HH", 0x7FE0, 0x0010))
    return {
        "cut_in_pixel_data": whole[:-1000],
        "cut_in_pixel_data_small": dataset(CT, uid, pixels=2000)[:-7],
        "cut_in_an_element_header": whole[: header_end + 5],
        "cut_after_the_uid": whole[: 30 + len(uid)],
        "cut_in_the_uid": whole[:14],
        "garbage": bytes(range(256)) * 40,
        "zeros": bytes(4096),
        "empty": b"",
        "open_sequence": whole[:header_end]
        + struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF),
        "item_runs_past_the_end": whole[:header_end]
        + struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 5000)
        + bytes(100),
        "sequence_delimiter_without_sequence": whole[:header_end]
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0),
    }


def test_12_truncated_or_undecodable_data_sets_c000_association_and_server_up(
    tmp_path: Path,
) -> None:
    """Case 12: each gets a C000-class failure on the same association, which then
    stores a whole data set; nothing half-received is kept, the server serves on."""
    router = make_router(tmp_path, {"pacs": dest("PACS", down_port())})
    uid = "1.2.826.0.1.3680043.8.498.1200"
    cases = _truncated_cases()
    with running(router), RawPeer(router.port) as peer:
        peer.established(contexts=((CT, (EXPLICIT,)), (CT, (IMPLICIT,))))
        for i, (name, data) in enumerate(cases.items()):
            status, _ = peer.store(CT, uid, data, mid=i + 1)
            assert 0xC000 <= status <= 0xCFFF, (name, hex(status))
        # explicit VR bytes on the implicit VR context do not decode either
        status, _ = peer.store(CT, uid, dataset(CT, uid), ctx=3)
        assert 0xC000 <= status <= 0xCFFF or status == 0xA900, hex(status)
        assert peer.store(CT, uid, dataset(CT, uid, pixels=600_000), mid=50) == (0, "")
        peer.release()
        assert echo_ok(router.port)
        assert router.metric("dicom_router_received_instances_total") == 1
    assert instance_count(router) == 1
    assert not partials(router)
    assert len(spool_files(router)) == 1


PRIVATE = "1.2.826.0.1.3680043.8.498.77777.1"  # a private SOP class nobody registers


@pytest.mark.parametrize("accept", [True, False])
def test_14_unknown_private_sop_class_per_config_never_an_abort(
    tmp_path: Path, accept: bool
) -> None:
    """Case 14: accept.accept_unknown_sop_classes true: the context is accepted, the
    instance stored and forwarded unchanged; false: that context is rejected (result 3,
    abstract syntax not supported) while the association and its other contexts work."""
    pacs = start_storescp(tmp_path / "pacs", "PACS", extra=["--promiscuous"])
    try:
        router = make_router(
            tmp_path,
            {"pacs": dest("PACS", pacs.port)},
            accept={"accept_unknown_sop_classes": accept},
        )
        uid, ct_uid = generate_uid(), generate_uid()
        with running(router), RawPeer(router.port) as peer:
            kind, whole = peer.associate(contexts=((PRIVATE, (EXPLICIT,)), (CT, (EXPLICIT,))))
            assert kind == A_ASSOCIATE_AC
            results = context_results(whole)
            assert results == {1: 0 if accept else 3, 3: 0}, results
            if accept:
                assert peer.store(PRIVATE, uid, dataset(PRIVATE, uid)) == (0, "")
            assert peer.store(CT, ct_uid, dataset(CT, ct_uid), ctx=3) == (0, "")
            peer.release()
            got = pacs.wait_files(2 if accept else 1)
            how = router.metric("dicom_router_associations_total", direction="in", how="released")
            assert how == 1
        by_name = {p.name: p for p in got}
        assert any(ct_uid in n for n in by_name)
        if accept:
            (private,) = [p for n, p in by_name.items() if uid in n]
            assert dataset_bytes(private) == dataset(PRIVATE, uid)
    finally:
        pacs.stop()


def test_14_pynetdicom_sender_with_a_private_sop_class(tmp_path: Path) -> None:
    """Case 14 with a real sender: pynetdicom proposes and sends a private SOP class
    instance; the router accepts it by default and forwards it unchanged."""
    from pynetdicom import AE

    pacs = start_storescp(tmp_path / "pacs", "PACS", extra=["--promiscuous"])
    try:
        router = make_router(tmp_path, {"pacs": dest("PACS", pacs.port)})
        f = write_dataset(tmp_path / "src" / "private.dcm", 10_000, sop_class_uid=PRIVATE)
        with running(router):
            ae = AE(ae_title="SENDER")
            ae.add_requested_context(PRIVATE, EXPLICIT)
            assoc = ae.associate("127.0.0.1", router.port, ae_title="ROUTER")
            assert assoc.is_established
            try:
                assert int(assoc.send_c_store(f).Status) == 0
            finally:
                assoc.release()
            got = pacs.wait_files(1)
        assert dataset_bytes(got[0]) == dataset_bytes(f)
    finally:
        pacs.stop()
