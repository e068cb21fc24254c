"""Public pathology data sets: resumable, checksum-verified, atomic downloads and extraction.

The transfer is hand-written on urllib (stdlib) because no library in the stack resumes with
HTTP Range (torchvision's download_url restarts from byte 0; an 11 GB zip over a flaky link
never finishes that way): bytes go to FILE.part, the .part is renamed to FILE only after its md5
matches (torchvision's check_integrity), and the zip is extracted (torchvision's extract_archive)
into a temp folder that is renamed into place, so an interrupted run never leaves something that
looks finished.
"""
from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.utils import calculate_md5, check_integrity, extract_archive

from core.errors import UserError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    filename: str
    url: str
    md5: str
    size: int | None       # bytes, when published; a size mismatch is caught before hashing
    page: str              # where a person downloads it by hand
    extract: bool


# Checksums as published on the Zenodo records. Note on NCT-CRC-HE-100K: Zenodo record 1214456
# lists md5 035777cf327776a71a05c95da6d6325f for NCT-CRC-HE-100K-NONORM.zip (the un-normalised
# variant) and 6fd702d11df6292bc054397ae038a464 for NCT-CRC-HE-100K.zip (Macenko-normalised, the
# one the paper's reference uses); some loaders pair 035777... with the normalised zip. These
# values could not be re-checked against Zenodo from this offline machine.
DATASETS = {
    "nct-crc-he-100k": Dataset(
        "NCT-CRC-HE-100K.zip", "https://zenodo.org/records/1214456/files/NCT-CRC-HE-100K.zip?download=1",
        "6fd702d11df6292bc054397ae038a464", 11_690_284_003, "https://zenodo.org/records/1214456", True),
    "nct-crc-he-100k-nonorm": Dataset(
        "NCT-CRC-HE-100K-NONORM.zip",
        "https://zenodo.org/records/1214456/files/NCT-CRC-HE-100K-NONORM.zip?download=1",
        "035777cf327776a71a05c95da6d6325f", None, "https://zenodo.org/records/1214456", True),
    "crc-val-he-7k": Dataset(
        "CRC-VAL-HE-7K.zip", "https://zenodo.org/records/1214456/files/CRC-VAL-HE-7K.zip?download=1",
        "2fd1651b4f94ebd818ebf90ad2b6ce06", 800_276_929, "https://zenodo.org/records/1214456", True),
    "pathmnist": Dataset(
        "pathmnist.npz", "https://zenodo.org/records/10519652/files/pathmnist.npz?download=1",
        "a8b06965200029087d5bd730944a56c1", None, "https://zenodo.org/records/10519652", False),
}


def by_hand(ds: Dataset, to: Path) -> str:
    return (f"download {ds.filename} by hand from {ds.page} and put it at {to / ds.filename} "
            f"(md5 {ds.md5}); then run this command again to verify and extract it")


def fetch(ds: Dataset, to: str | Path, progress=None, stop=None, timeout: float = 30.0) -> Path:
    """Download ds into to/ds.filename (resuming to/ds.filename.part); verify md5; rename."""
    to = Path(to).expanduser()
    to.mkdir(parents=True, exist_ok=True)
    final, part = to / ds.filename, to / f"{ds.filename}.part"
    if final.exists():
        if check_integrity(final, ds.md5):
            return final
        raise UserError(f"{final} exists but its md5 is {calculate_md5(final)}, expected {ds.md5}: "
                        "remove it (or rename it to .part to resume) and run again")
    have = part.stat().st_size if part.exists() else 0
    if not (ds.size and have == ds.size):
        _download_into(ds, part, have, progress, stop, timeout, to)
    if stop is not None and stop.is_set():
        return part
    if not check_integrity(part, ds.md5):
        got = calculate_md5(part)       # hashed again only on failure, to name the wrong md5
        bad = part.with_name(f"{ds.filename}.bad")
        os.replace(part, bad)
        raise UserError(f"checksum mismatch for {ds.filename}: md5 {got}, expected {ds.md5}; "
                        f"the download was moved to {bad} and will start over next time")
    os.replace(part, final)
    return final


def _download_into(ds: Dataset, part: Path, have: int, progress, stop, timeout, to: Path) -> None:
    request = urllib.request.Request(ds.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:      # nothing left to fetch: the .part is already whole
            return
        raise UserError(f"download of {ds.url} failed: HTTP {e.code}. Without access, {by_hand(ds, to)}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot reach {ds.url} ({reason}); no network? {by_hand(ds, to)}") from None
    with response:
        resumed = response.status == 206
        mode = "ab" if resumed else "wb"   # a server that ignores Range sends the whole file
        done = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length else ds.size
        try:
            with open(part, mode) as f:
                while block := response.read(CHUNK):
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress({"stage": "download", "step": done, "total": total, "unit": "B", "file": ds.filename})
                    if stop is not None and stop.is_set():
                        return
        except (OSError, http.client.HTTPException) as e:
            raise UserError(f"download of {ds.filename} interrupted at {done} bytes ({e}); "
                            "run the same command again to resume") from None
    if ds.size and done != ds.size:
        raise UserError(f"{ds.filename}: got {done} bytes, expected {ds.size}; run again to resume")


def extract_zip(archive: Path, to: Path) -> list[Path]:
    """Extract into a temp folder beside `to`, then move each top-level entry into place."""
    marker = to / f".{archive.name}.extracted"
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    # extract_archive (zipfile.extractall) silently rewrites "/abs" and "../x" entries to land
    # inside the folder instead; an archive that carries them is refused here, not half-trusted
    for name in names:
        if name.startswith("/") or ".." in Path(name).parts:
            raise UserError(f"{archive}: unsafe path in archive: {name}")
    tops = sorted({Path(n).parts[0] for n in names if n.strip("/")})
    if marker.exists() and all((to / t).exists() for t in tops):
        return [to / t for t in tops]
    tmp = Path(tempfile.mkdtemp(dir=to, prefix=f".{archive.stem}.", suffix=".tmp"))
    try:
        extract_archive(archive, tmp)
        for top in tops:
            if (to / top).exists():
                shutil.rmtree(to / top) if (to / top).is_dir() else (to / top).unlink()
            os.replace(tmp / top, to / top)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text("ok\n")
    return [to / t for t in tops]


def download(name: str, to: str | Path, progress=None, stop=None, dataset: Dataset | None = None,
             timeout: float = 30.0) -> dict:
    """Fetch (resume, verify) and extract a named data set; `dataset` overrides the registry
    entry (tests point it at a local server). Returns {"file", "extracted": [paths], "md5"}."""
    ds = dataset or DATASETS.get(name)
    if ds is None:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    to = Path(to).expanduser()
    path = fetch(ds, to, progress, stop, timeout)
    if path.name.endswith(".part"):
        return {"file": str(path), "extracted": [], "md5": None, "stopped": True}
    extracted = extract_zip(path, to) if ds.extract else []
    return {"file": str(path), "extracted": [str(p) for p in extracted], "md5": ds.md5}
