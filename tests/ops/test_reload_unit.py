"""router.reload without a router: what a reload keeps, what the watcher notices."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from router.config import load_config
from router.reload import ConfigWatcher, keep_restart_only, runtime_problems, watched_paths

BASE = """\
ae_title: ROUTER
listen: {host: 127.0.0.1, port: 11112, max_associations: 4}
storage: {path: ./storage, retention: 0}
http: {host: 127.0.0.1, port: 9108}
destinations:
  pacs: {ae_title: PACS, host: 10.0.0.1, port: 104}
rules: rules/*.yaml
"""


def setup_files(tmp_path: Path, config: str = BASE) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "a.yaml").write_text("- name: all\n  forward: [pacs]\n")
    path = tmp_path / "router.yaml"
    path.write_text(config)
    return path


def test_restart_only_settings_keep_their_running_values(tmp_path: Path) -> None:
    old = load_config(setup_files(tmp_path))
    changed_text = (
        BASE.replace("port: 11112, max_associations: 4", "port: 11113, max_associations: 8")
        .replace("port: 9108", "port: 9109")
        .replace("retention: 0", "retention: 60")
        .replace("host: 10.0.0.1", "host: 10.0.0.2")
    )
    new = load_config(setup_files(tmp_path, changed_text))
    merged, changed = keep_restart_only(old, new)
    assert changed == ["listen.port", "storage.retention", "http"]
    assert merged.listen.port == 11112 and merged.http.port == 9108
    assert merged.storage.retention == 0
    # the rest applies at once
    assert merged.listen.max_associations == 8
    assert merged.destinations["pacs"].host == "10.0.0.2"
    assert keep_restart_only(old, old) == (old, [])


def test_runtime_problems_name_unloadable_tls_files(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    path = setup_files(tmp_path, BASE.replace("port: 104}", "port: 104, tls: {ca: ca.pem}}"))
    problems = runtime_problems(path, load_config(path))
    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{path}: destinations.pacs.tls: cannot load")


def test_watched_paths(tmp_path: Path) -> None:
    path = setup_files(tmp_path)
    files, dirs = watched_paths(path, load_config(path))
    assert files == [path, tmp_path / "rules" / "a.yaml"]
    assert dirs == [(tmp_path / "rules").absolute()]


def test_watched_paths_include_profile_secret_files(tmp_path: Path) -> None:
    (tmp_path / "research.key").write_bytes(b"0123456789abcdef")
    text = BASE + "profiles:\n  research: {deidentify: {secret_file: research.key}}\n"
    path = setup_files(tmp_path, text)
    files, _ = watched_paths(path, load_config(path))
    assert files == [path, tmp_path / "rules" / "a.yaml", tmp_path / "research.key"]


@pytest.mark.asyncio
async def test_watcher_reacts_to_content_not_to_touch(tmp_path: Path) -> None:
    path = setup_files(tmp_path)
    cfg = load_config(path)
    changes: list[int] = []
    changed = anyio.Event()

    async def on_change() -> None:
        watcher.mark()  # as Router.reload does
        changes.append(1)
        changed.set()

    watcher = ConfigWatcher(lambda: watched_paths(path, cfg), on_change, interval=0.02, settle=0.01)

    async def next_change() -> None:
        nonlocal changed
        with anyio.fail_after(5):
            await changed.wait()
        changed = anyio.Event()

    async with anyio.create_task_group() as tg:
        watcher.mark()
        tg.start_soon(watcher.run)
        # touch: new mtime, same contents -> nothing
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        with anyio.move_on_after(0.3):  # many ticks: proving an absence takes a while
            await changed.wait()
        assert not changes
        # a rule file's contents change -> one call
        (tmp_path / "rules" / "a.yaml").write_text("- name: all\n  forward: [pacs]\n  stop: true\n")
        await next_change()
        # a new file in a rules directory -> one call
        (tmp_path / "rules" / "b.yaml").write_text("[]\n")
        await next_change()
        # the config replaced by rename (editors do this) -> one call
        tmp = tmp_path / "new.yaml"
        tmp.write_text(BASE + "# comment\n")
        os.replace(tmp, path)
        await next_change()
        tg.cancel_scope.cancel()
    assert len(changes) == 3
