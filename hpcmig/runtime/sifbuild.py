"""Build the small `.sif` test image: a separate Debian root that runs the mpi4py ring job.

Design note: this module owns one recipe, `build_test_image(dest)`, used by the tests, the
acceptance tests and the demo (Apptainer cannot be installed here, so it assembles the SIF
itself with Debian's `mksquashfs` and `siftool`). The root is made from this machine's own
packages, not downloaded: the files of a short list of Debian packages (`dpkg -L`: the
Python hpcmig runs on, MPICH, Open MPI, PMIx, UCX, hwloc, libmunge, dash, coreutils; where
Debian 12 and 13 name a library package differently, whichever is installed), every shared
library they link (`ldd`), and numpy + mpi4py copied from hpcmig's venv into
/usr/local/lib/python3.X/dist-packages, where the image's own `python3` finds them. It gets
its own /etc/os-release (ID=hpcmig-test), its own /etc/passwd, and the MPICH shim
/opt/hpcmig/lib/mpich/libmpi.so.12, so `hpcmig.mpi.flavour(...).environment()` is valid
inside it too.

Images are cached under /var/cache/hpcmig/images/ by a digest of the recipe and of every
input file's path, size and mtime: a second call returns at once, a changed package or venv
rebuilds. Builds are serialised with a lock file and land atomically (rename). It does not
mount, run or know anything about containers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from hpcmig import _proc
from hpcmig.errors import MissingDependency

RECIPE_VERSION = "1"
CACHE_DIR = "/var/cache/hpcmig/images"
OS_RELEASE_ID = "hpcmig-test"
PY_VERSION = sysconfig.get_python_version()  # Debian's python3 the venv was made from
PACKAGES = (
    "libc6", "dash", "coreutils", "hostname", "grep", "sed",
    "python3-minimal", f"python{PY_VERSION}-minimal", f"libpython{PY_VERSION}-minimal",
    f"libpython{PY_VERSION}-stdlib",
    "mpich", "libmpich12", "openmpi-bin", "openmpi-common",
    "libucx0", "libhwloc15", "libhwloc-plugins", "libfabric1", "libmunge2",
)
# one of each, whichever is installed: Debian 12's name, Debian 13's
ALTERNATIVES = (("libopenmpi3", "libopenmpi40"), ("libpmix2", "libpmix2t64"))
SKIP_PREFIXES = ("/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/locale",
                 "/usr/share/lintian", "/usr/share/bug", "/usr/lib/x86_64-linux-gnu/gconv")
PY_PACKAGES = ("numpy", "numpy.libs", "mpi4py")  # copied from hpcmig's venv
PY_DEST = f"usr/local/lib/python{PY_VERSION}/dist-packages"
SYSTEM_LIB_DIRS = ("/usr/lib", "/lib", "/usr/lib64", "/lib64")
TOOLS = ("dpkg-query", "ldd", "tar", "mksquashfs", "siftool", "ldconfig")
BUILD_TIMEOUT = 600.0

OS_RELEASE = f"""PRETTY_NAME="hpcmig test image {RECIPE_VERSION}"
NAME="hpcmig test image"
ID={OS_RELEASE_ID}
VERSION_ID="{RECIPE_VERSION}"
"""
ETC_FILES = {
    "etc/os-release": OS_RELEASE,
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:"
                  "/usr/sbin/nologin\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "hpcmig-test\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    "etc/ld.so.conf": "include /etc/ld.so.conf.d/*.conf\n",
}


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _norm(path: str) -> str:
    """The path with its directory resolved (/bin/sh -> /usr/bin/sh on merged-usr)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _keep(path: str) -> bool:
    return not path.startswith(SKIP_PREFIXES)


def installed(names: Iterable[str]) -> set[str]:
    """Which of these Debian packages are installed."""
    out = _proc.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\\n", *names],
                    timeout=60, check=False).stdout
    return {line.split()[-1] for line in out.splitlines() if line.startswith("ii ")}


def packages() -> tuple[str, ...]:
    """PACKAGES plus the installed one of each of ALTERNATIVES."""
    have = installed(name for group in ALTERNATIVES for name in group)
    chosen = []
    for group in ALTERNATIVES:
        found = [name for name in group if name in have]
        if not found:
            raise MissingDependency(f"the test image needs one of {', '.join(group)}",
                                    hint="install it (as root) with: bash scripts/bootstrap.sh "
                                         "install")
        chosen.append(found[0])
    return (*PACKAGES, *chosen)


def package_files(packages: Iterable[str]) -> set[str]:
    """Files and symlinks (not directories) the packages installed, plus symlink targets."""
    out = _proc.run(["dpkg-query", "-L", *packages], timeout=60).stdout
    found: set[str] = set()
    for line in out.splitlines():
        path = line.strip()
        if path.startswith("/") and _keep(path):
            _add(_norm(path), found)
    return found


def _add(path: str, found: set[str]) -> None:
    """Add a file or symlink; follow a symlink chain to the files it names (not to dirs)."""
    while path not in found and os.path.lexists(path):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            return
        found.add(path)
        if not stat.S_ISLNK(st.st_mode):
            return
        path = _norm(os.path.join(os.path.dirname(path), os.readlink(path)))
        if not _keep(path):
            return


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def parse_ldd(text: str) -> set[str]:
    """Library paths from `ldd f1 f2 ...` output (`name => /path (addr)` or `/path (addr)`)."""
    libs: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if "=>" in line:
            line = line.split("=>", 1)[1].strip()
        path = line.split(" (", 1)[0].strip()
        if path.startswith("/") and not path.endswith(":"):
            libs.add(path)
    return libs


def linked_libraries(files: Iterable[str]) -> set[str]:
    """System shared libraries the ELF files link (one `ldd` call per 200 files)."""
    elves = sorted(f for f in files if os.path.isfile(f) and not os.path.islink(f)
                   and _is_elf(f))
    libs: set[str] = set()
    for i in range(0, len(elves), 200):
        r = _proc.run(["ldd", *elves[i:i + 200]], check=False, timeout=120)
        libs |= parse_ldd(r.stdout)
    found: set[str] = set()
    for lib in libs:
        if lib.startswith(SYSTEM_LIB_DIRS):
            _add(_norm(lib), found)
    return found


def _py_sources(site: Path) -> list[Path]:
    tops: list[Path] = []
    for name in PY_PACKAGES:
        if not (site / name).is_dir():
            raise MissingDependency(f"test image: {name} is not installed in {site}",
                                    hint="install hpcmig's Python dependencies (numpy, mpi4py)")
        tops.append(site / name)
    tops += sorted(p for p in site.glob("*.dist-info")
                   if p.name.split("-")[0].lower() in ("numpy", "mpi4py"))
    return tops


def _walk(top: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in ("tests", "__pycache__"))
        for name in sorted(names):
            yield Path(root) / name


def recipe_digest(system_files: Iterable[str], py_tops: Iterable[Path],
                  names: Iterable[str] = PACKAGES) -> str:
    """sha256 over the recipe (the package names too) and every input's path, size, mtime."""
    h = hashlib.sha256()
    h.update(f"{RECIPE_VERSION}\n{tuple(names)}\n{sorted(ETC_FILES.items())}\n".encode())
    paths = sorted(system_files)
    for top in py_tops:
        paths += [str(p) for p in _walk(top)]
    for path in paths:
        st = os.lstat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
    return h.hexdigest()


def _stage(root: Path, system_files: list[str], py_tops: list[Path], site: Path) -> None:
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("lib64", "usr/lib64")):
        (root / target).mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / link)
    listing = "".join(p.lstrip("/") + "\n" for p in sorted(system_files))
    # `tar --files-from` keeps modes, owners and symlinks; --keep-directory-symlink keeps the
    # merged-usr links made above.
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as fh:
        fh.write(listing)
    try:
        _proc.run(["sh", "-c", 'tar -C / --no-recursion -cf - -T "$1" | '
                   'tar -C "$2" --keep-directory-symlink -xf -', "sh", fh.name, str(root)],
                  timeout=BUILD_TIMEOUT)
    finally:
        os.unlink(fh.name)
    dest = root / PY_DEST
    for top in py_tops:
        shutil.copytree(top, dest / top.name, symlinks=True,
                        ignore=shutil.ignore_patterns("tests", "__pycache__"))
    for rel, text in ETC_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "etc/ld.so.conf.d").mkdir(exist_ok=True)
    for d in ("proc", "sys", "dev", "home", "root", "run", "var/tmp", "opt/hpcmig/lib/mpich"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in ("tmp", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / d, 0o1777)
    if not (root / "usr/bin/python").exists():
        os.symlink("python3", root / "usr/bin/python")
    os.symlink("/usr/lib/x86_64-linux-gnu/libmpich.so.12",
               root / "opt/hpcmig/lib/mpich/libmpi.so.12")
    _proc.run(["ldconfig", "-r", str(root)], timeout=120)


def _assemble(root: Path, sif: Path, work: Path, names: Iterable[str]) -> None:
    squash = work / "rootfs.squashfs"
    _proc.run(["mksquashfs", str(root), str(squash), "-noappend", "-quiet", "-no-progress",
               "-comp", "lz4", "-no-xattrs"], timeout=BUILD_TIMEOUT)
    deffile = work / "hpcmig-test.def"
    deffile.write_text("Bootstrap: scratch\n# built by hpcmig.runtime.sifbuild from this "
                       f"machine's Debian packages: {' '.join(names)}\n")
    _proc.run(["siftool", "new", str(sif)])
    _proc.run(["siftool", "add", str(sif), str(deffile), "--datatype", "1"])
    _proc.run(["siftool", "add", str(sif), str(squash), "--datatype", "4", "--parttype", "2",
               "--partfs", "1", "--partarch", "2"], timeout=BUILD_TIMEOUT)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    with open(cache / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build_test_image(dest: str | Path | None = None, *, cache_dir: str | Path = CACHE_DIR,
                     ) -> Path:
    """The test image's path (built on first use, then cached by digest).

    With `dest`, the cached image is also hard-linked (or copied) to dest and dest returned.
    """
    for tool in TOOLS:
        if shutil.which(tool) is None:
            raise MissingDependency(f"building the test image needs {tool}",
                                    hint="apt-get install squashfs-tools siftool dpkg libc-bin")
    site = _site_packages()
    py_tops = _py_sources(site)
    names = packages()
    system = package_files(names)
    system |= linked_libraries(system | {str(p) for t in py_tops for p in _walk(t)})
    digest = recipe_digest(system, py_tops, names)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    image = cache / f"hpcmig-test-{digest[:16]}.sif"
    with _locked(cache):
        if not image.exists():
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
            try:
                root = work / "root"
                root.mkdir()
                _stage(root, sorted(system), py_tops, site)
                tmp_sif = work / "image.sif"
                _assemble(root, tmp_sif, work, names)
                os.chmod(tmp_sif, 0o644)
                os.replace(tmp_sif, image)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    if dest is None:
        return image
    target = Path(dest)
    if target.is_dir():
        target = target / image.name
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(image, target)
    except OSError:
        shutil.copy2(image, target)
    return target
