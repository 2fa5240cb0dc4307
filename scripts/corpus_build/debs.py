"""Reading the members of .deb files (ar archive holding tar members; stdlib only)."""
import io
import sys
import tarfile
from pathlib import Path


def ar_members(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"!<arch>\n", path
    pos, out = 8, {}
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48:pos + 58].decode().strip())
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def deb_tar(path, part):
    """Open control.tar.* or data.tar.* of a .deb (xz/gz/bz2; stdlib only)."""
    for name, blob in ar_members(path).items():
        if name.startswith(part + ".tar"):
            if name.endswith(".zst"):
                sys.exit(f"{path}: zstd-compressed .deb is not supported")
            return tarfile.open(fileobj=io.BytesIO(blob))
    raise FileNotFoundError(f"{part} in {path}")


def deb_files(path, wanted):
    """{member path without leading './': bytes} for regular files matching wanted."""
    out = {}
    with deb_tar(path, "data") as tar:
        for m in tar:
            name = m.name[2:] if m.name.startswith("./") else m.name
            if m.isfile() and wanted(name):
                out[name] = tar.extractfile(m).read()
    return out
