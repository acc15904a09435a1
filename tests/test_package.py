"""The package as a user gets it: the console script and ``python -m router`` answer,
every module imports on its own, and a wheel built from this source tree holds the
router package (with py.typed and the entry point) and nothing of tests/ or benchmarks/.

The commands run this tree's code: PYTHONPATH puts it ahead of the editable install
(under ``make test`` both are the same tree)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import router

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SUBCOMMANDS = ("run", "check", "explain", "queue", "echo")


def _run(
    *argv: str | Path, cwd: Path = ROOT, warnings: str = "error"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": warnings}
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_console_script_lists_the_subcommands() -> None:
    script = shutil.which("dicom-router", path=str(BIN))
    assert script is not None, f"no dicom-router console script in {BIN}"
    r = _run(script, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: dicom-router")
    # argparse lists each subcommand on its own line, with its help
    listed = set(re.findall(r"^ {4}(\w+) +\S", r.stdout, re.MULTILINE))
    assert listed >= set(SUBCOMMANDS), r.stdout


def test_python_m_router_version() -> None:
    r = _run(sys.executable, "-m", "router", "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"dicom-router {router.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", router.__version__)


def _modules() -> list[str]:
    pkg = ROOT / "router"
    names = []
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":  # runs the CLI when imported
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_on_its_own() -> None:
    """Each module in a fresh interpreter of its own would be slow: one interpreter
    imports them in turn, so an import cycle or a missing dependency still shows."""
    modules = _modules()
    assert "router.cli" in modules and "router.dicom.acceptor" in modules
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    print(importlib.import_module(name).__file__)\n"
    )
    r = _run(sys.executable, "-c", code, *modules)
    assert r.returncode == 0, r.stderr
    files = r.stdout.split()
    assert len(files) == len(modules)
    assert all(Path(f).is_relative_to(ROOT / "router") for f in files), files


def _source_tree(dest: Path) -> Path:
    """A copy of the files git knows (tracked or not ignored): a checkout, not the
    worktree itself, so the build leaves no build/ or egg-info behind here."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    return dest


def test_wheel_holds_the_router_package_and_no_tests(tmp_path: Path) -> None:
    src = _source_tree(tmp_path / "src")
    assert (src / "tests" / "test_package.py").is_file()  # there, to be left out
    out = tmp_path / "dist"
    # no build isolation: offline, and quick; the dev extra pins setuptools for it
    r = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-w",
        out,
        src,
        cwd=tmp_path,
        warnings="default",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("dicom_router-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"router", f"dicom_router-{router.__version__}.dist-info"}, top
    expected = {
        "router/" + p.relative_to(ROOT / "router").as_posix()
        for p in (ROOT / "router").rglob("*.py")
    }
    assert expected <= set(names), sorted(expected - set(names))
    assert "router/py.typed" in names
    info = f"dicom_router-{router.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert re.search(r"^dicom-router = router\.cli:main$", entry_points, re.MULTILINE)
