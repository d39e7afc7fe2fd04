"""din_runtime.fs: atomic file writes and directory publishing, as a reader of the path sees them."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from din_runtime import fs
from din_runtime.fs import AtomicFile, publish_dir, temp_dir_beside, write_bytes_atomic, write_json_atomic

from din_export.triton import write_triton_model

UMASK = 0o027  # not the usual 0o022, so a mode taken from anywhere but the umask shows


@pytest.fixture
def umask() -> Iterator[int]:
    old = os.umask(UMASK)
    yield UMASK
    os.umask(old)


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_write_bytes_replaces_whole_with_the_mode_of_a_plain_open(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "a" / "b" / "f.bin"  # missing parents are made
    write_bytes_atomic(target, b"old")
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert leftovers(target.parent, {"f.bin"}) == []


def test_write_json_is_indented_with_a_final_newline(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "x.json").read_text() == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="half way"), AtomicFile(target, "w", encoding="utf-8") as out:
        out.file.write("partial")
        assert target.read_text() == "old"  # nothing reaches the path before commit
        raise RuntimeError("half way")
    assert target.read_text() == "old"
    assert leftovers(tmp_path, {"f.txt"}) == []


def test_errors_name_the_path_asked_for(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError) as e:
        AtomicFile(tmp_path)
    assert e.value.filename == str(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        AtomicFile(tmp_path / "missing" / "f.txt")
    assert e.value.filename == str(tmp_path / "missing" / "f.txt")


def test_temp_dir_beside_has_the_mode_of_a_plain_mkdir(tmp_path: Path, umask: int) -> None:
    tmp = temp_dir_beside(tmp_path / "target")
    assert tmp.parent == tmp_path and tmp.name.startswith(".target.tmp-")
    assert tmp.stat().st_mode & 0o777 == 0o777 & ~umask


def version(parent: Path, name: str, text: str) -> Path:
    tmp = temp_dir_beside(parent / name)
    (tmp / "v").write_text(text)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "w").write_text(text)
    return tmp


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_publish_dir_creates_and_replaces(tmp_path: Path, exchange: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        monkeypatch.setattr(fs, "_exchange", lambda a, b: False)
    target = tmp_path / "model"
    publish_dir(version(tmp_path, "model", "1"), target)
    assert (target / "v").read_text() == "1"
    publish_dir(version(tmp_path, "model", "2"), target)
    assert (target / "v").read_text() == (target / "sub" / "w").read_text() == "2"
    assert leftovers(tmp_path, {"model"}) == []  # the old version and every temporary are gone


def test_publish_dir_restores_the_old_version_when_the_new_cannot_go_in(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs, "_exchange", lambda a, b: False)
    target = tmp_path / "model"
    publish_dir(version(tmp_path, "model", "1"), target)
    real_rename = os.rename
    new = version(tmp_path, "model", "2")

    def failing_rename(src: str | Path, dst: str | Path) -> None:
        if Path(src) == new:
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space"):
        publish_dir(new, target)
    monkeypatch.undo()
    assert (target / "v").read_text() == "1"
    assert leftovers(tmp_path, {"model", new.name}) == []


def watch(path: Path, stop: threading.Event, seen: set[str], missing: list[str]) -> None:
    """Keep opening `path` as a reader would, noting each content read and each time it was not there."""
    while not stop.is_set():
        try:
            seen.add(path.read_text())
        except FileNotFoundError:
            missing.append("missing")


def replace_while_read(target: Path, replace: Callable[[int], None], rounds: int = 150) -> tuple[set[str], list]:
    seen: set[str] = set()
    missing: list[str] = []
    stop = threading.Event()
    reader = threading.Thread(target=watch, args=(target, stop, seen, missing))
    reader.start()
    try:
        for i in range(rounds):
            replace(i)
    finally:
        stop.set()
        reader.join()
    return seen, missing


needs_exchange = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                    reason="an atomic directory swap is used on Linux only (renameat2)")


@needs_exchange
def test_a_reader_never_finds_a_published_dir_missing(tmp_path: Path) -> None:
    target = tmp_path / "model"
    publish_dir(version(tmp_path, "model", "start"), target)
    seen, missing = replace_while_read(target / "v",
                                       lambda i: publish_dir(version(tmp_path, "model", str(i)), target))
    assert not missing, f"{len(missing)} reads found {target} missing during replacement"
    assert seen <= {"start", *map(str, range(150))} and len(seen) > 1


@needs_exchange
def test_a_replaced_triton_model_stays_servable(tmp_path: Path) -> None:
    """Triton polls its repository: the model it serves must not vanish while --force replaces it."""
    tensors = [{"name": "x", "dtype": "float32", "dims": ["batch"]}]
    write_triton_model(tmp_path, "din", b"model 0", tensors, tensors)
    model = tmp_path / "din" / "1" / "model.onnx"
    seen, missing = replace_while_read(
        model, lambda i: write_triton_model(tmp_path, "din", f"model {i}".encode(), tensors, tensors, force=True),
        rounds=60)
    assert not missing, f"{len(missing)} reads found the Triton model missing during replacement"
    assert model.read_text() == "model 59"
    assert leftovers(tmp_path, {"din"}) == []
