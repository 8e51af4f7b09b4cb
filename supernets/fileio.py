"""Atomic file writes (readers never see a half-written output) and output folders checked before
any work is done (a command that cannot write fails at once, not after minutes of measuring)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from supernets.errors import NasError

__all__ = ["check_writable_dir", "file_mode", "unwritable_dir", "write_atomic"]


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask (usually 0o644)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def unwritable_dir(directory: str | os.PathLike) -> str | None:
    """Why files cannot be created in ``directory``, or None if they can.

    Tried for real: the missing folders are made, a temporary file is created in the last one,
    then all of it is removed again, so a command that fails later leaves no empty folder.
    """
    directory = Path(directory)
    made: list[Path] = []
    try:
        for folder in [*reversed(directory.parents), directory]:  # outermost first
            if folder.is_dir():
                continue
            if folder.exists() or folder.is_symlink():
                return ("exists and is not a directory" if folder == directory
                        else f"cannot create it, {folder} is not a directory")
            try:
                folder.mkdir()
            except FileExistsError:
                if folder.is_dir():     # made by another process meanwhile: not ours to remove
                    continue
                return f"cannot create it, {folder} is not a directory"
            except OSError as e:
                return f"cannot create it ({e.strerror or type(e).__name__})"
            made.append(folder)
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".nas-write-test.", suffix=".tmp")
        except OSError as e:
            return f"cannot create files in it ({e.strerror or type(e).__name__})"
        os.close(fd)
        os.unlink(tmp)
        return None
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:     # another process made something in it meanwhile: it stays
                break


def check_writable_dir(directory: str | os.PathLike, name: str) -> None:
    """NasError ``'<name> <directory>: <why>'`` unless files can be created in ``directory``."""
    why = unwritable_dir(directory)
    if why:
        raise NasError(f"{name} {directory}: {why}")


def refuse_used_out(out: Path, run_files: tuple[str, ...], what: str, force: bool) -> None:
    """A new run into ``out``: NasError if it holds any of ``run_files`` (another ``what``, e.g.
    "search"), unless ``force``."""
    held = [name for name in run_files if (out / name).exists()]
    if held and not force:
        raise NasError(f"{out}: already holds a {what} ({', '.join(held)}); continue it with "
                       f"--resume {out}, choose another --out, or pass --force to replace it")


def clear_run_files(out: Path, run_files: tuple[str, ...]) -> None:
    """``--force``: delete a run's own files in ``out`` and nothing else."""
    for name in run_files:
        (out / name).unlink(missing_ok=True)
