#!/bin/bash
# A single-node Slurm cluster on localhost, for tests and for trying job
# arrays (docs/SCALING.md) without a cluster: munged, slurmctld and slurmd
# (2 CPUs, no GPU gres), all state and logs in one folder, the system's
# /etc/slurm untouched (the daemons and the clients read $SLURM_CONF).
#
#   scripts/slurm/local_cluster.sh install   # apt: slurm-wlm, munge (idempotent; root)
#   scripts/slurm/local_cluster.sh start     # configure + start; waits until the node is idle
#   eval "$(scripts/slurm/local_cluster.sh env)"   # SLURM_CONF for sbatch/squeue/scancel
#   scripts/slurm/local_cluster.sh stop      # stops the daemons it started
#   scripts/slurm/local_cluster.sh status
#
# MECHLAB_SLURM_DIR (default /tmp/mechlab-slurm) holds slurm.conf, the
# spool, the state and the logs. The daemons run as the invoking user
# (SlurmUser, SlurmdUser), so `start` needs root only where munged must be
# started (it runs as the munge user, from the packaged key).
set -euo pipefail

dir=${MECHLAB_SLURM_DIR:-/tmp/mechlab-slurm}
conf=$dir/slurm.conf
me=$(id -un)
sbin=/usr/sbin

die() { echo "local_cluster.sh: $*" >&2; exit 1; }

have_slurm() { command -v sbatch >/dev/null && [ -x $sbin/slurmctld ] && [ -x $sbin/slurmd ] && [ -x $sbin/munged ]; }

install() {
  if have_slurm; then echo "slurm-wlm and munge: installed"; return; fi
  [ "$(id -u)" = 0 ] || die "installing needs root: sudo $0 install"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null ||
    { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; } ||
    die "apt-get could not install slurm-wlm and munge"
  have_slurm || die "slurm-wlm installed but slurmctld/slurmd/munged are missing"
  echo "slurm-wlm and munge: installed"
}

munge_up() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  munge_up && return
  [ -s /etc/munge/munge.key ] || die "no /etc/munge/munge.key; reinstall munge (it creates the key)"
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  if [ "$(id -u)" = 0 ]; then
    runuser -u munge -- $sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  else
    $sbin/munged || die "munged did not start; start it as root (sudo $0 start)"
  fi
  for _ in $(seq 50); do munge_up && return; sleep 0.1; done
  die "munged started but munge/unmunge fail (see /var/log/munge/munged.log)"
}

write_conf() {
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat >"$conf.tmp" <<CONF
# Written by scripts/slurm/local_cluster.sh: one node, localhost.
ClusterName=mechlab-local
SlurmctldHost=localhost
SlurmUser=$me
SlurmdUser=$me
SlurmctldPort=${MECHLAB_SLURMCTLD_PORT:-6817}
SlurmdPort=${MECHLAB_SLURMD_PORT:-6818}
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: track processes by their parent, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
InactiveLimit=0
MinJobAge=600
NodeName=localhost CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  mv "$conf.tmp" "$conf"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  have_slurm || die "slurm-wlm and munge are not installed; run: $0 install"
  start_munge
  write_conf
  export SLURM_CONF=$conf
  pid_alive "$dir/slurmctld.pid" || $sbin/slurmctld -c -f "$conf" ||
    die "slurmctld did not start; see $dir/log/slurmctld.log"
  pid_alive "$dir/slurmd.pid" || $sbin/slurmd -f "$conf" ||
    die "slurmd did not start; see $dir/log/slurmd.log"
  for _ in $(seq 100); do
    state=$(sinfo -h -N -o %t 2>/dev/null || true)
    case $state in idle*|mix*|alloc*) echo "local Slurm up: node localhost $state (SLURM_CONF=$conf)"; return ;; esac
    if [[ $state == down* || $state == drain* ]]; then scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true; fi
    sleep 0.2
  done
  die "the node did not become idle (state '${state:-none}'); see $dir/log/slurmctld.log and $dir/log/slurmd.log"
}

stop() {
  for d in slurmd slurmctld; do
    if pid_alive "$dir/$d.pid"; then
      pid=$(cat "$dir/$d.pid")
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  echo "local Slurm stopped (munged left running)"
}

case ${1:-} in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$conf" ;;
  status)
    export SLURM_CONF=$conf
    for d in slurmctld slurmd; do pid_alive "$dir/$d.pid" && echo "$d: running" || echo "$d: stopped"; done
    sinfo 2>&1 || true ;;
  *) die "usage: $0 install|start|stop|status|env" ;;
esac
