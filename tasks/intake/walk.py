"""Walking the data root safely: every entry found, classified by ``lstat`` before anything opens it.

A real archive holds more than images: hidden files, dot-folders, named pipes, sockets, devices, dangling or
escaping symlinks, symlink loops, names that are not valid UTF-8. ``walk`` yields every entry exactly once, in
sorted order, as an ``Entry``; ``problem`` (the quarantine reason) is set for anything that must not become a
record, and nothing with a problem is ever opened or hashed. The rules:

- a hidden file (name starting with ``.``) is an entry with reason "hidden file"; a dot-folder is one entry
  ("hidden folder"), not searched;
- a symlink is resolved with ``os.path.realpath`` (path text and metadata only, never the content): a target
  outside the root is "symlink leaves the data root", a missing one "dangling symlink", a cycle "symlink loop".
  Inside the root a symlink to a file is an ordinary file entry (its pixels then show up as an exact duplicate of
  the target) and a symlink to a folder is searched, unless the folder is one of its own ancestors (a loop) or was
  already searched through another symlink;
- only regular files (``S_ISREG``) are file entries; FIFOs, sockets and devices are "not a regular file", never
  opened (opening a FIFO blocks until someone writes to it);
- a name that is not valid UTF-8, or holds control characters (newline, tab, escape, ...), is quarantined; it is
  shown escaped (``shown``) so the quarantine table stays one valid UTF-8 line per entry.

``read_regular`` opens a file entry with ``O_NOFOLLOW | O_NONBLOCK`` and checks ``S_ISREG`` again on the open
descriptor: a file swapped for a FIFO or a symlink between the walk and the read is refused, not waited on.
``BadImage`` (one entry cannot be used; its message is the quarantine reason) is defined here, the wing's base.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: Deepest folder searched: deeper trees are one quarantine entry (a hostile tree must not exhaust the stack).
MAX_DEPTH = 64
#: Longest quarantine reason kept (decoder messages can run to several lines of plugin errors).
MAX_REASON = 400
_KINDS = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))


class BadImage(ValueError):
    """One file cannot be used; the message is the quarantine reason."""


@dataclass(frozen=True)
class Entry:
    """One thing found under the root. ``rel``: its path as found (posix, may hold surrogate escapes);
    ``path``: what to open (the real path behind a followed symlink); ``problem``: the quarantine reason."""

    rel: str
    path: Path
    problem: str | None = None


def shown(name: str) -> str:
    """``name`` as printable one-line UTF-8: undecodable bytes as ``\\xNN``, control characters as ``\\n`` etc."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" else c
                   for c in text)


def one_line(reason: str) -> str:
    """A reason on one line (line breaks become `` | ``), at most ``MAX_REASON`` characters."""
    text = " | ".join(part.strip() for part in str(reason).splitlines() if part.strip())
    text = shown(text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def name_problem(name: str) -> str | None:
    """Why a file or folder name cannot be a record's name (not UTF-8, control characters), else None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "name contains control characters"
    return None


def kind_of(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words."""
    return next((word for test, word in _KINDS if test(mode)), "special file")


def inside(target: str, root_real: str) -> bool:
    """True if the real path ``target`` is ``root_real`` or below it."""
    return os.path.commonpath([target, root_real]) == root_real


def walk(root: Path, search_hidden: frozenset[str] = frozenset()) -> Iterator[Entry]:
    """Every entry below ``root``, sorted, each once (see the module docstring for the rules).

    ``search_hidden``: relative paths of dot-folders to search anyway (metadata.csv lists files inside them).
    """
    root_real = os.path.realpath(root)
    yield from _walk_dir(root_real, "", _Walk(root_real, search_hidden), (root_real,))


@dataclass
class _Walk:
    root_real: str
    search_hidden: frozenset[str]
    followed: set[str] = field(default_factory=set)  # real folders already searched through a symlink


def _walk_dir(folder: str, prefix: str, w: _Walk, chain: tuple[str, ...]) -> Iterator[Entry]:
    if len(chain) > MAX_DEPTH:
        yield Entry(prefix.rstrip("/"), Path(folder), f"folder nested deeper than {MAX_DEPTH} levels: not searched")
        return
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        if not prefix:
            raise
        yield Entry(prefix.rstrip("/"), Path(folder), f"folder cannot be listed: {err.strerror}")
        return
    for name in names:
        path, rel = os.path.join(folder, name), prefix + name
        try:
            st = os.lstat(path)
        except OSError as err:  # vanished or unreadable since the listing
            yield Entry(rel, Path(path), f"cannot be examined: {err.strerror}")
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if name.startswith(".") and not (is_dir and rel in w.search_hidden):
            yield Entry(rel, Path(path), "hidden folder (name starts with '.'): not searched" if is_dir
                        else "hidden file (name starts with '.')")
        elif problem := name_problem(name):
            yield Entry(rel, Path(path), f"folder {problem}: not searched" if is_dir else f"file {problem}")
        elif stat.S_ISLNK(st.st_mode):
            yield from _symlink(path, rel, w, chain)
        elif is_dir:
            yield from _walk_dir(path, rel + "/", w, (*chain, path))
        elif stat.S_ISREG(st.st_mode):
            yield Entry(rel, Path(path))
        else:
            yield Entry(rel, Path(path), f"not a regular file ({kind_of(st.st_mode)}): not opened")


def _symlink(path: str, rel: str, w: _Walk, chain: tuple[str, ...]) -> Iterator[Entry]:
    target = os.path.realpath(path)
    if not inside(target, w.root_real):
        yield Entry(rel, Path(path), "symlink leaves the data root: not read")
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        yield Entry(rel, Path(path), "dangling symlink (its target does not exist)")
        return
    except OSError as err:
        reason = "symlink loop" if err.errno == errno.ELOOP else f"symlink target cannot be examined: {err.strerror}"
        yield Entry(rel, Path(path), reason)
        return
    if stat.S_ISDIR(st.st_mode):
        if target in chain:
            yield Entry(rel, Path(path), f"symlinked folder loops back to {shown(os.path.relpath(target, w.root_real))}"
                                         " (its own ancestor): not searched")
        elif target in w.followed:
            yield Entry(rel, Path(path), "symlinked folder already searched through another symlink")
        else:
            w.followed.add(target)
            yield from _walk_dir(target, rel + "/", w, (*chain, target))
    elif stat.S_ISREG(st.st_mode):
        yield Entry(rel, Path(target))
    else:
        yield Entry(rel, Path(path), f"symlink to a non-regular file ({kind_of(st.st_mode)}): not opened")


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file ``path`` (not a symlink, FIFO or device: BadImage, without blocking)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise BadImage("became a symlink after it was found: not read") from None
        raise BadImage(f"cannot be opened: {err.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadImage(f"not a regular file ({kind_of(mode)}): not read")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def dvc_hazards(root: Path) -> list[Entry]:
    """Entries of ``root`` (dot-folders included) that DVC's own hashing of a dependency folder cannot take.

    ``dvc repro`` hashes ``paths.raw`` before ingest runs, and DVC (measured with 3.67) blocks forever on a FIFO,
    stops at a dangling symlink or a name that is not UTF-8, and reads through a symlink that leaves the folder.
    Ingest itself quarantines all of these; this lists them so a person (or a preflight) can move them away first.
    """
    root_real, found = os.path.realpath(root), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if name_problem(name) == "name is not valid UTF-8":
                found.append(Entry(rel, Path(path), "name is not valid UTF-8 (DVC stops)"))
            elif stat.S_ISLNK(mode):
                target = os.path.realpath(path)
                if not inside(target, root_real):
                    found.append(Entry(rel, Path(path), "symlink leaves the folder (DVC reads its target)"))
                elif not os.path.exists(path):
                    found.append(Entry(rel, Path(path), "dangling or looping symlink (DVC stops)"))
            elif not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                found.append(Entry(rel, Path(path), f"{kind_of(mode)} (DVC blocks or fails on it)"))
    return found


def dvc_preflight(root: Path, limit: int = 10) -> None:
    """Before any ``dvc`` command touches ``root`` (``dvc status``/``repro`` hash ``paths.raw`` as ingest's
    dependency): refuse, naming the entries, instead of letting DVC hang on a FIFO or stop without a file name."""
    root = Path(root)
    if not root.is_dir():
        return  # ingest itself says that paths.raw is missing
    hazards = dvc_hazards(root)
    if not hazards:
        return
    listed = "; ".join(f"{shown(e.rel)}: {e.problem}" for e in hazards[:limit])
    more = f"; and {len(hazards) - limit} more" if len(hazards) > limit else ""
    from tasks.stage import StageError

    raise StageError(f"{root} holds {len(hazards)} entr{'y' if len(hazards) == 1 else 'ies'} that DVC cannot hash "
                     f"(`dvc repro` would hang or stop before ingest runs): {listed}{more}. Move them out of the "
                     f"folder and run again; nothing was changed (`python -m tasks.intake.walk {root}` lists them)")


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.intake.walk FOLDER``: log the DVC hazards of FOLDER; exit status 1 when there are any."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folders = sys.argv[1:] if argv is None else argv
    hazards = [(folder, e) for folder in folders for e in dvc_hazards(Path(folder))]
    for folder, entry in hazards:
        log.warning("%s/%s: %s", folder, shown(entry.rel), entry.problem)
    log.info("%d entries DVC cannot hash in %s", len(hazards), ", ".join(folders))
    return 1 if hazards else 0


if __name__ == "__main__":
    sys.exit(main())
