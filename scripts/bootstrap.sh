#!/usr/bin/env bash
# hpcmig bootstrap: everything a fresh Debian 12 (bookworm) or 13 (trixie) machine needs, then
# one action.
#
#   bash scripts/bootstrap.sh demo     install, then `hpcmig demo` on the built-in testbed
#   bash scripts/bootstrap.sh test     install, then the whole test suite (unit + integration)
#   bash scripts/bootstrap.sh install  install only
#
# Idempotent: each step checks what is already there. Runs as root (it installs OS packages,
# builds CRIU and creates the testbed). Everything lands under /opt/hpcmig and /usr/local.
set -euo pipefail

PREFIX=${HPCMIG_PREFIX:-/opt/hpcmig}
VENV=$PREFIX/venv
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs OS packages and builds a Slurm testbed); try: sudo bash $0 ${1:-install}"
[ -r /etc/debian_version ] || die "this script supports Debian 12 (bookworm) and 13 (trixie) only"
DEBIAN_VERSION=$(. /etc/os-release 2>/dev/null && echo "${VERSION_ID:-}")
case "$DEBIAN_VERSION" in
  12|13) ;;
  *) log "warning: tested on Debian 12 and 13, this is Debian '${DEBIAN_VERSION:-testing/unstable}'" ;;
esac

OS_PACKAGES=(
  # Slurm, MUNGE, MPI
  slurm-wlm slurm-client munge libslurm-dev
  openmpi-bin libopenmpi-dev mpich libmpich-dev
  # namespaces, networking, processes
  iproute2 nftables util-linux procps psmisc iputils-ping kmod
  # benchmarks/network's mode container-gro: a veth's GRO (NAPI mode)
  ethtool
  # the virtual network's fast path (hpcmig/network/fastpath.py): build and load a tc program
  clang libbpf-dev bpftool
  # Python environment and build tools
  python3 python3-venv python3-dev build-essential pkgconf git xz-utils dpkg-dev patch
  # images and the second runtime
  squashfs-tools squashfuse siftool lxc
  # CRIU 4.x build dependencies (PLATFORM.md)
  libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev
  libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev
  python3-protobuf libaio-dev
)

install_os_packages() {
  local missing=()
  for p in "${OS_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { log "OS packages present"; return; }
  log "installing ${#missing[@]} OS packages: ${missing[*]}"
  # No init system runs services here; keep package scripts from starting daemons the testbed owns.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod 755 $policy; made_policy=1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ $made_policy = 1 ] && rm -f $policy
  return 0
}

CRIU_PATCHES=("$HERE"/scripts/criu/*.patch)
CRIU_MARK=/usr/local/share/hpcmig/criu-build

criu_build_id() { cat "${CRIU_PATCHES[@]}" | sha256sum | cut -c1-16; }

criu_ok() {
  command -v criu >/dev/null || return 1
  # Our build carries the patches in scripts/criu (kernel >= 6.16, no CAP_SYS_RESOURCE).
  [ "$(command -v criu)" = /usr/local/sbin/criu ] && [ "$(cat $CRIU_MARK 2>/dev/null)" = "$(criu_build_id)" ] || return 1
  local v; v=$(criu --version 2>/dev/null | sed -n 's/^Version: *\([0-9]*\).*/\1/p')
  [ -n "$v" ] && [ "$v" -ge 4 ] && criu check >/dev/null 2>&1
}

install_criu() {
  if criu_ok; then log "CRIU $(criu --version | sed -n 's/^Version: *//p') works"; return; fi
  # Debian 12's criu 3.17 fails on recent kernels (vDSO), Debian 13's 4.1.1 on Linux >= 6.16
  # (SO_PASSCRED); build the 4.x upstream tarball that Debian ships for trixie with our patches.
  # The deb-src entry is derived from this machine's own mirror.
  local src=$PREFIX/src list=/etc/apt/sources.list.d/hpcmig-criu-src.sources uri
  uri=$(sed -n 's/^URIs: *\(.*debian\/*\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  [ -n "$uri" ] || uri=$(sed -n 's/^deb \(http[^ ]*debian\/*\) [a-z]* .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n1)
  [ -n "$uri" ] || die "cannot find the Debian mirror in /etc/apt/sources.list.d/debian.sources"
  log "building CRIU 4.x from Debian trixie's source package (mirror $uri)"
  printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >$list
  mkdir -p "$src"
  (cd "$src" && apt-get update -qq -o Dir::Etc::sourcelist=$list -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 \
      && apt-get source --download-only -qq criu) >"$src/criu-download.log" 2>&1 || true
  rm -f $list
  # Only the upstream .orig tarball is needed (the .dsc may be missing on the mirror).
  local tarball; tarball=$(ls -1 "$src"/criu_*.orig.tar.* 2>/dev/null | sort -V | tail -n1)
  [ -n "$tarball" ] || { cat "$src/criu-download.log" >&2; die "could not download CRIU's source from the Debian mirror"; }
  rm -rf "$src/criu-build" && mkdir -p "$src/criu-build"
  tar -xf "$tarball" -C "$src/criu-build" --strip-components=1
  local p
  for p in "${CRIU_PATCHES[@]}"; do
    if patch -d "$src/criu-build" -p1 --quiet --forward --dry-run <"$p" >/dev/null; then
      patch -d "$src/criu-build" -p1 --quiet --forward <"$p"
    else
      log "warning: $(basename "$p") does not apply to $(basename "$tarball"); building without it" \
          "(container dumps may fail on kernels >= 6.16 or without CAP_SYS_RESOURCE)"
    fi
  done
  make -C "$src/criu-build" -j"$(nproc)" criu >"$src/criu-build.log" 2>&1 || { tail -n 30 "$src/criu-build.log" >&2; die "CRIU build failed (log: $src/criu-build.log)"; }
  install -m 0755 "$src/criu-build/criu/criu" /usr/local/sbin/criu
  mkdir -p "$(dirname $CRIU_MARK)" && criu_build_id >$CRIU_MARK
  hash -r
  criu_ok || die "CRIU was built but 'criu check' fails: $(criu check 2>&1 | tail -n 3)"
  log "CRIU $(criu --version | sed -n 's/^Version: *//p') installed in /usr/local/sbin"
}

# Post-copy moves: CRIU's page server reads lazy pages through pipes it grows to about
# 3.2 MiB; where root lacks CAP_SYS_RESOURCE they stop at fs.pipe-max-size (1 MiB by
# default), which halves the transfer rate (benchmarks/migration/README.md, "Pipe size").
SYSCTL_FILE=/etc/sysctl.d/60-hpcmig.conf
install_sysctl() {
  [ "$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)" -ge 4194304 ] && return
  mkdir -p /etc/sysctl.d
  printf '# hpcmig: post-copy live moves (CRIU lazy pages)\nfs.pipe-max-size = 4194304\n' >$SYSCTL_FILE
  sysctl -q -p $SYSCTL_FILE >/dev/null 2>&1 || log "could not set fs.pipe-max-size (post-copy moves stay slower)"
  return 0
}

install_python() {
  # Debian's python3, not a per-user interpreter: job users must be able to run it.
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; /usr/bin/python3 -m venv "$VENV"; }
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  log "installing hpcmig and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q "$HERE[test]"
  "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$HERE"
  # mpi4py's MPICH-ABI module links libmpi.so.12; Debian names MPICH's library libmpich.so.12.
  local multiarch; multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
  mkdir -p "$PREFIX/lib/mpich"
  ln -sf "/usr/lib/$multiarch/libmpich.so.12" "$PREFIX/lib/mpich/libmpi.so.12"
  chmod -R a+rX "$PREFIX"
  ln -sf "$VENV/bin/hpcmig" /usr/local/bin/hpcmig
}

install_jobs() {
  # the C workloads of jobs/, one binary per MPI (PREFIX/jobs/bin/ring.{mpich,openmpi})
  make -s -C "$HERE/jobs" install PREFIX="$PREFIX" BUILD="$PREFIX/src/jobs-build" >/dev/null
  # hpcmig's native libraries (PREFIX/lib/libhpcmig-ucx-finalize.so: MPICH ranks preload it)
  make -s -C "$HERE/native" install PREFIX="$PREFIX" BUILD="$PREFIX/src/native-build" >/dev/null
  # the SPANK plugin (PREFIX/lib/hpcmig_spank.so: --hpcmig=... on sbatch, salloc and srun),
  # built against the installed Slurm's spank.h; plugstack.conf names it by absolute path
  make -s -C "$HERE/slurm-plugins/spank" install PREFIX="$PREFIX" BUILD="$PREFIX/src/spank-build" >/dev/null
}

action=${1:-install}
case "$action" in
  install|demo|test) ;;
  *) die "unknown action '$action' (expected: install, demo or test)" ;;
esac
install_os_packages
install_criu
install_sysctl
install_python
install_jobs
case "$action" in
  demo) exec "$VENV/bin/hpcmig" demo ;;
  test) cd "$HERE" && exec "$VENV/bin/python" -m pytest -ra tests ;;
esac
log "installed; run: hpcmig demo"
