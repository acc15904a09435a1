"""De-identified output checked against the IODs by an independent validator: dicom3tools'
dciodvfy (installed by `make test`). The output may not have an error the original had not.

(Deflated files are left out: dciodvfy cannot read that transfer syntax at all.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from router.profiles import OPTIONS, rewrite_part10
from tests.profiles.helpers import SECRET, bundled, ct_instance, new_uid, part10, profile

FILES = (
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "rtplan.dcm",
    "waveform_ecg.dcm",
    "examples_overlay.dcm",
)
ALL_BUT_FULL_DATES = tuple(o for o in OPTIONS if o != "retain_longitudinal_full_dates")


@pytest.fixture(scope="module")
def dciodvfy() -> str:
    found = shutil.which("dciodvfy")
    if not found:
        pytest.fail("dciodvfy is not installed: run `make test` (it installs dicom3tools)")
    return found


def errors(dciodvfy: str, path: Path) -> set[str]:
    done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    # a value quoted in a message changes with de-identification; the finding does not
    return {re.sub(r"<[^>]*>", "<>", line) for line in lines if "Error" in line}


@pytest.mark.parametrize("options", [(), ALL_BUT_FULL_DATES], ids=["basic", "all-options"])
@pytest.mark.parametrize("name", FILES)
def test_deidentified_output_has_no_new_iod_error(
    dciodvfy: str, tmp_path: Path, name: str, options: tuple[str, ...]
) -> None:
    src = bundled(name)
    rewritten = rewrite_part10(profile(*options), SECRET, src)
    out = tmp_path / name
    out.write_bytes(b"".join([rewritten.meta, *rewritten.chunks(src)]))
    before, after = errors(dciodvfy, src), errors(dciodvfy, out)
    assert "Error - Dicom dataset read failed" not in after
    assert after <= before, sorted(after - before)


def test_a_built_instance_stays_as_valid_as_it_was(dciodvfy: str, tmp_path: Path) -> None:
    src = part10(
        ct_instance(new_uid(), new_uid(), new_uid(), new_uid(), b"\x03" * 64), tmp_path / "in"
    )
    rewritten = rewrite_part10(profile(), SECRET, src)
    out = tmp_path / "out"
    out.write_bytes(b"".join([rewritten.meta, *rewritten.chunks(src)]))
    after = errors(dciodvfy, out)
    assert after <= errors(dciodvfy, src), sorted(after - errors(dciodvfy, src))
