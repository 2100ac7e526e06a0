#!/usr/bin/env bash
# Run the README's test command (`bash scripts/bootstrap.sh test`: install, unit tests, the
# integration tier on the real testbed) inside a fresh Debian root filesystem, fully isolated
# from this machine: its own mount, network, PID, UTS and IPC namespaces, pivot_root into the
# root filesystem, its own /proc, /sys, /run, /tmp, /dev/shm, /dev/pts. Network to the mirror
# and PyPI comes from slirp4netns (user-mode NAT into the private network namespace), so
# nothing of this machine's network, testbed or configuration is touched.
#
#   bash scripts/distro-test.sh [SUITE] [--fresh] [--shell] [-- CMD...]
#
#   SUITE    a Debian suite debootstrap knows (default: trixie)
#   --fresh  start from a pristine root filesystem (otherwise the last run's is reused, so
#            packages, CRIU and the venv are already there and set-up takes seconds)
#   --shell  an interactive shell inside instead of the test command
#   CMD      run CMD inside (in the clone, /work/hpcmig) instead of the test command
#
# The checkout's HEAD (committed changes only) is cloned into the root filesystem. The root
# filesystem and logs live under ${HPCMIG_DISTRO_DIR:-/var/tmp/hpcmig-SUITE}. Runs as root;
# needs debootstrap and slirp4netns (apt-get install debootstrap slirp4netns). Everything it
# starts dies with its PID namespace, and its mounts with its mount namespace, on any exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'distro-test: %s\n' "$*" >&2; }
die() { printf 'distro-test: error: %s\n' "$*" >&2; exit 1; }

# -- inside: PID 1 of the new namespaces, before pivot_root (host binaries) ------------------
if [ "${1:-}" = __inside ]; then
  shift
  rootfs=$1 ready=$2; shift 2
  # wait for slirp4netns to configure eth0 (the parent starts it once we exist)
  ip link set lo up
  for _ in $(seq 1 100); do ip -o -4 addr show eth0 2>/dev/null | grep -q inet && break; sleep 0.1; done
  ip -o -4 addr show eth0 | grep -q inet || { echo "distro-test: no network (eth0)" >&2; exit 1; }
  mount --bind "$rootfs" "$rootfs"
  mount -t proc proc "$rootfs/proc"
  mount -t sysfs sysfs "$rootfs/sys"            # this network namespace's view of /sys/class/net
  mount --rbind /sys/fs/cgroup "$rootfs/sys/fs/cgroup"
  mount --rbind /dev "$rootfs/dev"              # device nodes (loop, fuse, tun, null, ...)
  mount -t tmpfs -o mode=1777 tmpfs "$rootfs/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$rootfs/dev/pts"
  mount --bind "$rootfs/dev/pts/ptmx" "$rootfs/dev/ptmx"
  mount -t mqueue mqueue "$rootfs/dev/mqueue" 2>/dev/null || true
  mount -t tmpfs -o mode=755 tmpfs "$rootfs/run"
  mount -t tmpfs -o mode=1777 tmpfs "$rootfs/tmp"
  # the prebuilt DMTCP the tests use (.ci/run), read-only at the same path
  if [ -n "${HPCMIG_DMTCP_PREFIX:-}" ] && [ -d "$HPCMIG_DMTCP_PREFIX" ]; then
    mkdir -p "$rootfs$HPCMIG_DMTCP_PREFIX"
    mount --bind "$HPCMIG_DMTCP_PREFIX" "$rootfs$HPCMIG_DMTCP_PREFIX"
    mount -o remount,bind,ro "$rootfs$HPCMIG_DMTCP_PREFIX"
  fi
  hostname "$(cat "$rootfs/etc/hostname")"
  touch "$ready"
  mkdir -p "$rootfs/.oldroot"
  cd "$rootfs"
  pivot_root . .oldroot
  # PID 1 stays a shell that reaps orphans (daemons the tests leave behind) until CMD ends.
  # A fresh machine's environment: nothing of this machine's (PIP_*, proxies) but HPCMIG_*.
  keep=(); for v in $(compgen -e); do case $v in HPCMIG_*|TERM) keep+=("$v=${!v}") ;; esac; done
  exec env -i "${keep[@]}" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 chroot . /bin/bash -c 'umount -l /.oldroot && rmdir /.oldroot
    cd /work/hpcmig
    "$@" & child=$!
    while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done
    exit $rc' distro-pid1 "$@"
fi

# -- outside (one function: bash reads it whole, so editing this file mid-run is harmless) ---
main() {
suite=trixie fresh=0 mode=test cmd=()
while [ $# -gt 0 ]; do
  case "$1" in
    --fresh) fresh=1 ;;
    --shell) mode=shell ;;
    --) shift; cmd=("$@"); mode=cmd; break ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) suite=$1 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "must run as root (namespaces, debootstrap); try: sudo bash $0 $suite"
for tool in debootstrap slirp4netns unshare git; do
  command -v $tool >/dev/null || die "$tool is missing; install it with: apt-get install debootstrap slirp4netns"
done

dir=${HPCMIG_DISTRO_DIR:-/var/tmp/hpcmig-$suite}
rootfs=$dir/rootfs base=$dir/base.tar
mkdir -p "$dir/logs"
mirror=$(sed -n 's/^URIs: *\(.*debian\/*\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}

# 1. the pristine root filesystem (debootstrap once, kept as a tarball) and the one in use
if [ ! -s "$base" ]; then
  log "debootstrap --variant=minbase $suite from $mirror"
  rm -rf "$dir/base.new"
  t0=$SECONDS
  debootstrap --variant=minbase "$suite" "$dir/base.new" "$mirror" >"$dir/logs/debootstrap.log" 2>&1 \
    || { tail -n 20 "$dir/logs/debootstrap.log" >&2; die "debootstrap failed (log: $dir/logs/debootstrap.log)"; }
  tar -C "$dir/base.new" -cf "$base.new" . && mv "$base.new" "$base" && rm -rf "$dir/base.new"
  log "root filesystem made in $((SECONDS - t0)) s ($(du -sh "$base" | cut -f1))"
fi
if [ $fresh = 1 ] || [ ! -e "$rootfs/etc/debian_version" ]; then
  rm -rf "$rootfs" && mkdir -p "$rootfs" && tar -C "$rootfs" -xf "$base"
fi
printf 'nameserver 10.0.2.3\n' >"$rootfs/etc/resolv.conf"  # slirp4netns's DNS forwarder
# a host name that resolves, as an install writes it (without "hpcmig": the tests look for
# what the testbed leaves in /etc/hosts by that word)
echo "debian-$suite" >"$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian-%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
  "$suite" >"$rootfs/etc/hosts"
# deb822 sources as a Debian install writes them (debootstrap leaves a one-line sources.list)
rm -f "$rootfs/etc/apt/sources.list"
case $suite in
  sid|unstable)
    suites=$suite
    # unstable's Release is valid for a week only; a mirror snapshot (or a clock ahead of it)
    # makes apt refuse it as expired
    echo 'Acquire::Check-Valid-Until "false";' >"$rootfs/etc/apt/apt.conf.d/99hpcmig-distro-test" ;;
  *) suites="$suite $suite-updates" ;;
esac
printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
  "$mirror" "$suites" >"$rootfs/etc/apt/sources.list.d/debian.sources"
# This machine's own certificate authorities (a TLS-inspecting proxy's, for pip): the local
# ones go where Debian's ca-certificates picks them up; until that package is installed, the
# machine's bundle stands in.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  if [ -x "$rootfs/usr/sbin/update-ca-certificates" ]; then
    chroot "$rootfs" /usr/sbin/update-ca-certificates >/dev/null 2>&1 || log "warning: update-ca-certificates failed"
  elif [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$rootfs/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  fi
fi

# 2. a clean clone of this checkout's HEAD
rm -rf "$rootfs/work/hpcmig" && mkdir -p "$rootfs/work"
git clone -q "$HERE" "$rootfs/work/hpcmig"
rev=$(git -C "$rootfs/work/hpcmig" log -1 --format='%h %s')
[ -z "$(git -C "$HERE" status --porcelain --untracked-files=no)" ] \
  || log "note: uncommitted changes in $HERE are not in the clone"

export HPCMIG_DMTCP_PREFIX=${HPCMIG_DMTCP_PREFIX:-}
for prefix in "$HERE/../shared/tools/dmtcp" /work/shared/tools/dmtcp; do
  [ -z "$HPCMIG_DMTCP_PREFIX" ] && [ -x "$prefix/bin/dmtcp_launch" ] && HPCMIG_DMTCP_PREFIX=$(cd "$prefix" && pwd)
done
# DMTCP 4.2.0 checkpoints Debian 12's MPI only: on Debian 13 (MPICH 4.2 with UCX 1.18, Open
# MPI 5 with PRRTE) a checkpoint of a ring never completes, whether DMTCP was built on Debian
# 12 or 13 (docs/platforms.md). The MPI-under-DMTCP tests skip with that reason elsewhere.
if [ "$suite" != bookworm ] && [ -z "${HPCMIG_DMTCP_MPI_SKIP+set}" ]; then
  export HPCMIG_DMTCP_MPI_SKIP="DMTCP 4.2.0 does not complete a checkpoint of Debian $suite's MPI (docs/platforms.md)"
fi
case $mode in
  test) cmd=(env HPCMIG_REQUIRE_INTEGRATION=1 HPCMIG_DMTCP_PREFIX="$HPCMIG_DMTCP_PREFIX" bash scripts/bootstrap.sh test) ;;
  shell) cmd=(bash -i) ;;
esac

# 3. enter: new namespaces, network by slirp4netns, cleanup on any exit
stamp=$(date -u +%Y%m%dT%H%M%SZ)
logfile=$dir/logs/$mode-$stamp.log
ready=$(mktemp -u "/tmp/hpcmig-distro-ready.XXXXXX")
ns_pid='' slirp_pid=''
cleanup() {
  [ -n "$slirp_pid" ] && kill "$slirp_pid" 2>/dev/null || true
  # unshare ignores SIGTERM while it waits; SIGKILL it, and --kill-child takes its child
  # (PID 1 of the namespace) and so every process inside with it
  [ -n "$ns_pid" ] && kill -KILL "$ns_pid" 2>/dev/null || true
  [ -n "$ns_pid" ] && wait "$ns_pid" 2>/dev/null || true
  [ -n "$slirp_pid" ] && wait "$slirp_pid" 2>/dev/null || true
  rm -f "$ready"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "suite $suite, clone of $rev, log $logfile"
t0=$(date +%s)
exec 3<&0
if [ $mode = shell ]; then
  unshare --mount --net --pid --uts --ipc --fork --kill-child \
    bash "$0" __inside "$rootfs" "$ready" "${cmd[@]}" <&3 &
else
  unshare --mount --net --pid --uts --ipc --fork --kill-child \
    bash "$0" __inside "$rootfs" "$ready" "${cmd[@]}" </dev/null > >(tee "$logfile") 2>&1 &
fi
ns_pid=$!
for _ in $(seq 1 50); do
  [ "$(readlink /proc/$ns_pid/ns/net 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ] && break
  sleep 0.1
done
# The device is eth0, as on an ordinary machine: the testbed's nodes and containers see this
# namespace's /sys, and UCX (MPICH) picks its TCP device (UCX_NET_DEVICES=eth0) from
# /sys/class/net before it opens it in the container's own network namespace.
slirp4netns --configure --mtu=65520 --disable-host-loopback "$ns_pid" eth0 >"$dir/logs/slirp-$stamp.log" 2>&1 &
slirp_pid=$!
rc=0
wait "$ns_pid" || rc=$?
ns_pid=''
sleep 0.5  # let tee write the last lines
secs=$(( $(date +%s) - t0 ))
if [ $mode = test ]; then
  summary=$(grep -a -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$logfile" | tail -n 1 || true)
  log "exit $rc after ${secs} s; pytest: ${summary:-no summary (see the log)}"
  log "log: $logfile"
fi
return $rc
}
main "$@"
