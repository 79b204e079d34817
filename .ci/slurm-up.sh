#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this host (Debian slurm-wlm 22.05 + munge).
#
# Run as root. Idempotent: a second call finds the cluster answering and returns at once;
# a call after a config change (or after the daemons died) rewrites slurm.conf and restarts.
# No systemd: munged, slurmctld and slurmd are started directly. The test suite's `slurm`
# tests (hydra/launcher=slurm sweeps, scontrol requeue) run against this cluster.
#
# Environment:
#   SLURM_UP_CRED_EXPIRE  seconds a requeued job waits before it may start again (default 10;
#                         Slurm's own default, 120, makes a requeue take ~2.5 min)
#   SLURM_UP_TIMEOUT      seconds to wait for the node to become idle (default 60)
set -euo pipefail

CRED_EXPIRE="${SLURM_UP_CRED_EXPIRE:-10}"
TIMEOUT="${SLURM_UP_TIMEOUT:-60}"
CONF=/etc/slurm/slurm.conf
LOG=/var/log/slurm
STATE=/var/lib/slurm/slurmctld
SPOOL=/var/lib/slurm/slurmd

say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root"

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
     && command -v sbatch >/dev/null; then
    return
  fi
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q slurm-wlm munge
}

# The config this host should run; written only when it differs from the one in place.
render_conf() {
  local host cpus mem
  host="$(hostname -s)"
  # slurmd -C reports what slurmd itself will detect, so the node never registers as INVALID.
  read -r cpus mem < <(slurmd -C | awk '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { print v["CPUs"], v["RealMemory"] }')
  [[ -n "$cpus" && -n "$mem" ]] || die "slurmd -C did not report CPUs/RealMemory"
  cat <<EOF
# Written by .ci/slurm-up.sh: single-node cluster on ${host}.
ClusterName=zoexp
SlurmctldHost=${host}
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=${CRED_EXPIRE}
StateSaveLocation=${STATE}
SlurmdSpoolDir=${SPOOL}
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG}/slurmctld.log
SlurmdLogFile=${LOG}/slurmd.log
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating munge key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    die "munged does not answer"
  fi
}

stop_daemon() {  # $1: pid file of a daemon we started earlier
  local pid
  [[ -f "$1" ]] || return 0
  pid="$(cat "$1")"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$1"
}

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_slurm() {
  local fresh="$1"
  install -d -o slurm -g slurm -m 0755 "$STATE" "$LOG"
  install -d -m 0755 "$SPOOL"
  if [[ "$fresh" == 1 ]]; then
    stop_daemon /run/slurmd.pid
    stop_daemon /run/slurmctld.pid
  fi
  running /run/slurmctld.pid || { say "starting slurmctld"; /usr/sbin/slurmctld; }
  running /run/slurmd.pid || { say "starting slurmd"; /usr/sbin/slurmd; }
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n1; }

wait_idle() {
  local state=""
  for _ in $(seq $((TIMEOUT * 2))); do
    state="$(node_state)"
    case "$state" in
      idle|mixed|allocated) return 0 ;;
      down*|drain*|drained*|inval*)
        scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2 || true
  die "node not idle after ${TIMEOUT}s (state: ${state:-none})"
}

smoke_test() {
  local dir id state
  dir="$(mktemp -d)"
  chmod 0777 "$dir"
  id="$(sbatch --parsable --chdir="$dir" --output="$dir/out" --time=1 --wrap hostname)"
  for _ in $(seq $((TIMEOUT * 2))); do
    state="$(scontrol show job "$id" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')"
    if [[ "$state" == COMPLETED ]]; then
      say "sbatch smoke test: job $id ran on $(cat "$dir/out")"
      rm -rf "$dir"
      return 0
    fi
    [[ "$state" == FAILED || "$state" == CANCELLED || "$state" == NODE_FAIL ]] && break
    sleep 0.5
  done
  die "sbatch smoke test: job $id ended as ${state:-unknown}"
}

main() {
  install_packages
  local want fresh=0
  want="$(render_conf)"
  if [[ ! -f "$CONF" ]] || [[ "$(cat "$CONF")" != "$want" ]]; then
    say "writing $CONF"
    printf '%s\n' "$want" > "$CONF"
    fresh=1
  fi
  start_munge
  start_slurm "$fresh"
  wait_idle
  smoke_test
  sinfo
}

main "$@"
