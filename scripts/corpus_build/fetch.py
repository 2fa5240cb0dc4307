"""Finding and downloading the artefacts (.deb files, PyPI files, apt indices) and
reading the versions recorded in the manifest from the downloaded files."""
import glob
import gzip
import re
import subprocess
import sys
from pathlib import Path

from .config import APT_LANGS, DEBS, PYPI
from .debs import deb_tar

# ---------------------------------------------------------------- download


def apt_list(codename, tail):
    hits = sorted(glob.glob(f"/var/lib/apt/lists/*_dists_{codename}_main_{tail}*"))
    hits = [h for h in hits if not h.endswith(("_InRelease", ".diff_Index"))]
    if not hits:
        sys.exit(f"no apt list for {tail}")
    return hits[0]


def download(workdir):
    """Fetch .deb files, PyPI artefacts and the apt indices into workdir."""
    debs, pypi, apt = (Path(workdir) / d for d in ("debs", "pypi", "apt"))
    for d in (debs, pypi, apt):
        d.mkdir(parents=True, exist_ok=True)
    langs = ",".join(APT_LANGS.values())
    subprocess.run(["apt-get", "update", "-o", f"Acquire::Languages={langs}"], check=True)
    subprocess.run(["apt-get", "download", *DEBS], cwd=debs, check=True)
    for spec, sdist in PYPI.values():
        extra = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        *extra, spec, "-d", str(pypi)], check=True)
    codename = re.search(r"^VERSION_CODENAME=(\w+)", Path("/etc/os-release").read_text(),
                         re.M).group(1)
    tails = {"Packages": "binary-amd64_Packages"}
    tails.update({f"Translation-{c}": f"i18n_Translation-{c.replace('_', '%5f')}"
                  for c in APT_LANGS.values()})
    for out, tail in tails.items():
        raw = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", apt_list(codename, tail)],
                             check=True, capture_output=True).stdout
        (apt / f"{out}.gz").write_bytes(gzip.compress(raw, mtime=0))
    release = Path(apt_list(codename, "").rsplit("_main_", 1)[0] + "_InRelease").read_text()
    date = re.search(r"^Date: (.+)$", release, re.M).group(1)
    (apt / "RELEASE").write_text(f"debian {codename} main, Release Date: {date}\n")


# ---------------------------------------------------------------- downloaded files


def find_deb(workdir, pkg):
    hits = sorted(glob.glob(str(Path(workdir) / "debs" / f"{pkg}_*.deb")))
    if not hits:
        sys.exit(f"missing {pkg}_*.deb in {workdir}/debs (run with --download)")
    return hits[-1]


def pypi_file(workdir, name):
    hits = sorted(h for h in glob.glob(str(Path(workdir) / "pypi" / f"{name}-*"))
                  if h.endswith((".tar.gz", ".whl")))
    if not hits:
        sys.exit(f"missing {name} artefact in {workdir}/pypi (run with --download)")
    return hits[-1]


def deb_version(path):
    with deb_tar(path, "control") as tar:
        for m in tar:
            if m.name.lstrip("./") == "control":
                text = tar.extractfile(m).read().decode()
                return re.search(r"^Version: (.+)$", text, re.M).group(1)
    raise ValueError(path)


def pypi_version(path):
    return re.match(r"[^-]+-([^-]+?)(\.tar\.gz|-py)", Path(path).name).group(1)
