"""A hostile ingest corpus, generated in a temporary folder (nothing is checked in): what real archives hold.

``build_hostile_corpus`` writes a folder-per-class tree (classes small, big) of good images plus every odd case
issue #17 item 5 lists: odd image modes, multi-frame files, FIFOs, sockets, devices, dangling / looping /
escaping symlinks, symlinked folders, names that are not UTF-8 or hold control characters, hidden files and
dot-folders, broken and bomb files, DICOMs. It returns the expected outcome of *every* entry, so a test can check
that each one is accounted for: ``Outcome("ok", note fragment)``, ``Outcome("quarantine", reason fragment)`` or
``Outcome("duplicate")``.
"""

from __future__ import annotations

import gzip
import io
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from badinput import bomb_png, make_dicom, png_bytes

#: ingest.max_pixels the corpus is ingested with: the bomb reasons must quote it (not Pillow's own 89478485).
MAX_PIXELS = 20_000_000


@dataclass(frozen=True)
class Outcome:
    kind: str  # ok | quarantine | duplicate
    fragment: str = ""  # a piece of the ingest_note (ok) or of the reason (quarantine)


def pattern(seed: int, size: int = 48) -> np.ndarray:
    """A smooth 8-bit picture, different for every seed (no two corpus images share pixels)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def _gray(seed: int) -> Image.Image:
    return Image.fromarray(pattern(seed))


def _rgb(seed: int) -> Image.Image:
    return Image.fromarray(np.stack([pattern(seed), pattern(seed + 1000), pattern(seed + 2000)], axis=-1))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _frames(seeds: list[int]) -> list[Image.Image]:
    return [_gray(s) for s in seeds]


def _write(path: Path | bytes, data: bytes) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _modes(seed: int) -> dict[str, tuple[bytes, Outcome]]:
    """Odd image modes and multi-frame files that must convert (file name → bytes, outcome)."""
    lab = Image.merge("LAB", [_gray(seed + k) for k in range(3)])
    i16 = Image.fromarray(pattern(seed + 3).astype(np.uint16) * 200 + 1000)
    i32 = Image.fromarray(pattern(seed + 4).astype(np.int32) * 5000 - 70000)
    flt = Image.fromarray(pattern(seed + 5).astype(np.float32) / 7.0 - 3.0)
    pal = _rgb(seed + 6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    trns = _rgb(seed + 7).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    la = Image.merge("LA", [_gray(seed + 8), _gray(seed + 9)])
    rgba = Image.merge("RGBA", [_gray(seed + 10 + k) for k in range(4)])
    gif_frames = [f.convert("P") for f in _frames([seed + 20, seed + 21, seed + 22, seed + 23])]
    return {
        "lab.tif": (encode(lab, "TIFF"), Outcome("ok", "LAB converted to sRGB")),
        "ycbcr.tif": (encode(_rgb(seed + 1).convert("YCbCr"), "TIFF"), Outcome("ok")),
        "cmyk.jpg": (encode(_rgb(seed + 2).convert("CMYK"), "JPEG"), Outcome("ok")),
        "cmyk.tif": (encode(_rgb(seed + 12).convert("CMYK"), "TIFF"), Outcome("ok")),
        "i16.png": (encode(i16, "PNG"), Outcome("ok", "rescaled by min/max")),
        "i32.tif": (encode(i32, "TIFF"), Outcome("ok", "I rescaled by min/max")),
        "float.tif": (encode(flt, "TIFF"), Outcome("ok", "F rescaled by min/max")),
        "palette.png": (encode(pal, "PNG"), Outcome("ok")),
        "palette_trns.png": (encode(trns, "PNG", transparency=0), Outcome("ok", "transparency composited")),
        "la.png": (encode(la, "PNG"), Outcome("ok", "transparency composited")),
        "rgba.png": (encode(rgba, "PNG"), Outcome("ok", "transparency composited")),
        "bilevel.png": (encode(_gray(seed + 13).convert("1"), "PNG"), Outcome("ok")),
        "stack.tif": (encode(_gray(seed + 14), "TIFF", save_all=True, append_images=_frames([seed + 15, seed + 16])),
                      Outcome("ok", "frame 1 of 3 used")),
        "anim.gif": (encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:]),
                     Outcome("ok", "frame 1 of 4 used")),
        "anim.png": (encode(_gray(seed + 24), "PNG", save_all=True, append_images=_frames([seed + 25])),
                     Outcome("ok", "frame 1 of 2 used")),
        "still.gif": (encode(_gray(seed + 26).convert("P"), "GIF"), Outcome("ok")),
    }


def _dicoms(seed: int) -> dict[str, tuple[bytes, Outcome]]:
    stored = pattern(seed).astype(np.uint16) * 16  # 12-bit range
    stack = np.stack([pattern(seed + k).astype(np.uint16) * 16 for k in range(1, 4)])
    return {
        "scan_m1.dcm": (make_dicom(stored, "MONOCHROME1", slope=2.0, intercept=-1024.0),
                        Outcome("ok", "MONOCHROME1 inverted")),
        "window.dcm": (make_dicom(stored + 7, window=(1500.0, 2000.0)), Outcome("ok", "DICOM window LINEAR")),
        "multi.dcm": (make_dicom(stack), Outcome("ok", "frame 1 of 3 used")),
        "no_pixels.dcm": (_dicom_without_pixels(), Outcome("quarantine", "no pixel data")),
        "bad_jpeg.dcm": (_dicom_bad_jpeg(stored), Outcome("quarantine", "corrupt DICOM")),
        "headerless.dcm": (b"\x08\x00\x05\x00" + bytes(range(256)) * 2, Outcome("quarantine", "not a DICOM file")),
    }


def _dicom_without_pixels() -> bytes:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom(np.zeros((4, 4), dtype=np.uint16))))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_bad_jpeg(stored: np.ndarray) -> bytes:
    """JPEG Baseline transfer syntax around bytes that are no JPEG: every decoder plugin fails (multi-line error)."""
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = dcmread(io.BytesIO(make_dicom(stored)))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 this is not a jpeg stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _special_files(root: Path, outside: Path) -> dict[str, Outcome]:
    """FIFOs, a socket, a character device (where this machine lets us make one)."""
    out: dict[str, Outcome] = {}
    os.mkfifo(root / "small" / "pipe.png")
    out["small/pipe.png"] = Outcome("quarantine", "not a regular file (named pipe): not opened")
    os.mkfifo(outside / "fifo.png")
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(root / "big" / "sock.png"))
        out["big/sock.png"] = Outcome("quarantine", "not a regular file (socket)")
    except OSError:  # path too long for AF_UNIX on this machine: the sub-case is skipped
        pass
    try:
        os.mknod(root / "small" / "null.png", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        out["small/null.png"] = Outcome("quarantine", "not a regular file (character device)")
    except (PermissionError, OSError):  # no CAP_MKNOD (containers): the sub-case is skipped
        pass
    return out


def _links(root: Path, outside: Path) -> dict[str, Outcome]:
    """Symlinks: dangling, looping, leaving the root, to a FIFO, and symlinked folders in and out of the root."""
    small, big = root / "small", root / "big"
    (outside / "dir").mkdir()
    _write(outside / "secret.png", png_bytes(_gray(900)))
    _write(outside / "dir" / "x.png", png_bytes(_gray(901)))
    for i in range(2):
        _write(root / ".store" / "batch" / f"b{i}.png", png_bytes(_gray(950 + i)))
    links = {
        small / "dangling.png": "nowhere.png",
        small / "escape.png": str(outside / "secret.png"),
        small / "passwd.png": "/etc/passwd",
        small / "fifo_link.png": str(outside / "fifo.png"),
        small / "pipe_link.png": "pipe.png",
        small / "loop_a.png": "loop_b.png",
        small / "loop_b.png": "loop_a.png",
        small / "outdir": str(outside / "dir"),
        small / "up": "..",
        big / "loopdir": ".",
        big / "batch": "../.store/batch",
        small / "zz_again": "../.store/batch",
        big / "zz_link.png": "img001.png",
    }
    for link, target in links.items():
        os.symlink(target, link)
    leaves = Outcome("quarantine", "symlink leaves the data root: not read")
    return {
        "small/dangling.png": Outcome("quarantine", "dangling symlink"),
        "small/escape.png": leaves, "small/passwd.png": leaves, "small/fifo_link.png": leaves,
        "small/outdir": leaves,
        "small/pipe_link.png": Outcome("quarantine", "symlink to a non-regular file (named pipe)"),
        "small/loop_a.png": Outcome("quarantine", "symlink loop"),
        "small/loop_b.png": Outcome("quarantine", "symlink loop"),
        "small/up": Outcome("quarantine", "loops back to . (its own ancestor)"),
        "big/loopdir": Outcome("quarantine", "loops back to big (its own ancestor)"),
        ".store": Outcome("quarantine", "hidden folder"),
        "big/batch/b0.png": Outcome("ok"), "big/batch/b1.png": Outcome("ok"),
        "small/zz_again": Outcome("quarantine", "already searched through another symlink"),
        "big/zz_link.png": Outcome("duplicate"),
    }


def _names(root: Path) -> dict[str, Outcome]:
    """Hidden files and folders, names that are not UTF-8 or hold control characters."""
    _write(root / ".DS_Store", b"\0\0\0\1Bud1")
    _write(root / "small" / ".hidden.png", png_bytes(_gray(700)))
    _write(root / "big" / ".thumbs" / "t.png", png_bytes(_gray(701)))
    _write(os.fsencode(root / "small") + b"/bad\xff.png", png_bytes(_gray(702)))
    _write(os.fsencode(root / "big") + b"/dir\xfe/x.png", png_bytes(_gray(703)))
    _write(root / "small" / "new\nline.png", png_bytes(_gray(704)))
    _write(root / "small" / "\x1b[31mred.png", png_bytes(_gray(705)))
    return {
        ".DS_Store": Outcome("quarantine", "hidden file"),
        "small/.hidden.png": Outcome("quarantine", "hidden file"),
        "big/.thumbs": Outcome("quarantine", "hidden folder (name starts with '.'): not searched"),
        "small/bad\\xff.png": Outcome("quarantine", "file name is not valid UTF-8"),
        "big/dir\\xfe": Outcome("quarantine", "folder name is not valid UTF-8: not searched"),
        "small/new\\nline.png": Outcome("quarantine", "file name contains control characters"),
        "small/\\x1b[31mred.png": Outcome("quarantine", "file name contains control characters"),
    }


def _broken(root: Path) -> dict[str, Outcome]:
    """Damaged, empty, disguised, unsupported and bomb files; wrong places and conflicting labels."""
    good = png_bytes(_gray(800))
    files = {
        "small/truncated.png": (good[: len(good) // 2], "truncated"),
        "big/corrupt.jpg": (encode(_gray(801), "JPEG")[:200] + b"\x00garbage" * 50, "corrupt"),
        "small/notes.png": (b"this is a text file, not an image\n", "not a readable"),
        "small/zipped.png": (gzip.compress(good), "not a readable"),
        "big/empty.png": (b"", "empty file"),
        "small/bomb.png": (bomb_png(), f"exceed ingest.max_pixels={MAX_PIXELS}"),
        "big/bomb_small.png": (bomb_png(5000, 5000), f"25000000 pixels exceed ingest.max_pixels={MAX_PIXELS}"),
        "small/report.pdf": (b"%PDF-1.4\n", "unsupported file type .pdf"),
        "small/noext": (good, "unsupported file type (no extension)"),
        "zebra/stripes.png": (png_bytes(_gray(802)), "unknown label"),
        "loose.png": (png_bytes(_gray(803)), "not inside a class folder"),
        "small/twin.png": (png_bytes(_gray(804)), "identical image found under different labels"),
        "big/twin.png": (png_bytes(_gray(804)), "identical image found under different labels"),
        "small/nan.tif": (encode(Image.fromarray(np.full((8, 8), np.nan, np.float32)), "TIFF"), "non-finite"),
    }
    for name, (data, _) in files.items():
        _write(root / name, data)
    return {name: Outcome("quarantine", fragment) for name, (_, fragment) in files.items()}


def build_hostile_corpus(root: Path, outside: Path) -> dict[str, Outcome]:
    """Write the corpus under ``root`` (``outside``: a folder beside it for escaping links); return every entry's
    expected outcome, keyed by the source as ingest shows it (undecodable bytes and control characters escaped)."""
    expected: dict[str, Outcome] = {}
    for label, offset in (("small", 0), ("big", 100)):
        for i in range(10):
            _write(root / label / f"img{i:03d}.png", png_bytes(_gray(offset + i)))
            expected[f"{label}/img{i:03d}.png"] = Outcome("ok")
    for label, cases in (("small", _modes(200)), ("big", _dicoms(300))):
        for name, (data, outcome) in cases.items():
            _write(root / label / name, data)
            expected[f"{label}/{name}"] = outcome
    _write(root / "big" / "zz_copy.png", png_bytes(_gray(100)))  # exact copy of big/img000.png
    expected["big/zz_copy.png"] = Outcome("duplicate")
    outside.mkdir(parents=True, exist_ok=True)
    expected |= _special_files(root, outside)
    expected |= _links(root, outside)
    expected |= _names(root)
    expected |= _broken(root)
    return expected
