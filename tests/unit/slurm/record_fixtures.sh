#!/usr/bin/env bash
# Record the Slurm outputs tests/unit/slurm reads, from a real testbed of 3 nodes, as root:
#
#   hpcmig testbed up --nodes 3 && bash tests/unit/slurm/record_fixtures.sh OUTDIR; hpcmig testbed down
#
# Writes OUTDIR/<what>_<major.minor>.<ext> (the installed Slurm's version in every name).
# The scenario is the one the 22.05 fixtures show: a finished job of root's; `ringjob` of
# hpcuser running on node1 and node2 with node3 excluded; `waiting` pending; node3 drained by
# root ("bad dimm (admin)"); then node1 draining under the job ("hpcmig: evacuating"); then
# ringjob requeued. Best recorded on a fresh testbed (scripts/distro-test.sh does that).
set -euo pipefail
out=${1:?usage: record_fixtures.sh OUTDIR}
mkdir -p "$out"
v=$(sinfo --version | sed -n 's/^slurm[^0-9]*\([0-9]*\.[0-9]*\).*/\1/p')
[ -n "$v" ] || { echo "record_fixtures: cannot read Slurm's version" >&2; exit 1; }
home=/run/hpcmig-testbed/home/hpcuser
as_user() { (cd "$home" && runuser -u hpcuser -- "$@"); }
state() { scontrol show job "$1" -o | sed -n 's/.* JobState=\([A-Z_]*\).*/\1/p'; }
wait_state() {
  for _ in $(seq 1 120); do [ "$(state "$1")" = "$2" ] && return; sleep 0.5; done
  echo "record_fixtures: job $1 is $(state "$1"), not $2" >&2; exit 1
}
# scontrol's JSON (Slurm 23.02 and later; 22.05 has none)
scontrol_json=0; scontrol show config --json >/dev/null 2>&1 && scontrol_json=1
nodes() {  # SUFFIX: every shape of the node list hpcmig reads
  sinfo --json >"$out/sinfo${1}_$v.json"
  scontrol show node -o >"$out/scontrol_show_node${1}_$v.txt"
  [ $scontrol_json = 0 ] || scontrol show node --json >"$out/scontrol_show_node${1}_$v.json"
}
jobs() {  # SUFFIX: every shape of the job list hpcmig reads
  squeue --json >"$out/squeue${1}_$v.json"
  [ $scontrol_json = 0 ] || scontrol show job --json >"$out/scontrol_show_job${1}_$v.json"
}

done_job=$(cd "$home" && sbatch --parsable -J hostname -N3 --wrap hostname)
wait_state "$done_job" COMPLETED
scontrol update NodeName=node3 State=DRAIN Reason="bad dimm (admin)"
ring=$(as_user sbatch --parsable -J ringjob -N2 --exclude=node3 --wrap 'sleep 600')
wait_state "$ring" RUNNING
waiting=$(as_user sbatch --parsable -J waiting -N3 --wrap true)
sleep 2  # the scheduler gives the pending job its reason
nodes ""
jobs ""
scontrol show job -o >"$out/scontrol_show_job_$v.txt"
sinfo -N -h -o '%N|%T|%E|%c' >"$out/sinfo_text_$v.txt"
scontrol show config >"$out/scontrol_show_config_$v.txt"
scontrol update NodeName=node1 State=DRAIN Reason="hpcmig: evacuating"
nodes _draining
scontrol requeue "$ring"
wait_state "$ring" PENDING
jobs _requeued
scancel "$ring" "$waiting"
scontrol update NodeName=node1,node3 State=RESUME
ls -l "$out"
