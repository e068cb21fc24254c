"""Image files of every kind users really have (good, converted, corrupt), for the data tests."""
from __future__ import annotations

import numpy as np
import tifffile
from PIL import Image


def he_array(h=24, w=32):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([200 - x * 2, 80 + y * 3, 180 + 0 * x], -1).astype(np.uint8)


def make_bad_folder(root):
    """One file of each kind; returns {name: expected outcome} ("ok" or a reason fragment)."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(he_array())
    rgb.save(root / "good.PNG")
    rgb.save(root / "good.JPEG", quality=95)
    rgb.convert("L").save(root / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.new("L", rgb.size, 0))            # fully transparent -> white
    rgba.save(root / "rgba.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((np.arange(24 * 32).reshape(24, 32) * 60).astype(np.uint16)).save(root / "gray16.tif")
    tifffile.imwrite(root / "rgb16.tif", he_array().astype(np.uint16) * 257, photometric="rgb")
    exif = Image.Exif()
    exif[0x0112] = 6                                        # rotate 90 CW on display
    rgb.save(root / "exif_rotated.jpg", exif=exif.tobytes())
    Image.fromarray(he_array(4, 4)).save(root / "tiny.png")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / "fake.tif").write_text("this is not a tiff")
    data = (root / "good.PNG").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    return {"good.PNG": "ok", "good.JPEG": "ok", "gray.png": "ok", "rgba.png": "ok",
            "palette.png": "ok", "cmyk.jpg": "ok", "gray16.tif": "ok", "rgb16.tif": "ok",
            "exif_rotated.jpg": "ok", "tiny.png": "too small", "empty.png": "empty file",
            "notes.txt": "not an image extension", "fake.tif": "unreadable",
            "truncated.png": "unreadable"}


def bomb_png(path, side: int) -> int:
    """A valid 1-bit PNG of side x side white pixels: ~110 KB on disk at 30000 px, 2.7 GB once
    decoded to RGB (a decompression bomb). Returns its size in bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    packer = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * ((side + 7) // 8)         # filter byte + one bit per pixel
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return len(data)
