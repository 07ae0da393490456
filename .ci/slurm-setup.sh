#!/usr/bin/env bash
# A single-node SLURM on this machine for the `slurm` tests (tests/test_slurm.py):
# installs Debian's slurm-wlm + munge when missing, writes a one-node slurm.conf for
# this host, starts munged, slurmctld and slurmd directly (no systemd), and waits
# until the node takes jobs. Idempotent: running it again with everything up is a
# no-op; daemons that died are restarted. Needs root (or sudo) the first time.
#
#   bash .ci/slurm-setup.sh          # then: sinfo; srun hostname
#
# Exits 0 when `srun` works, 1 otherwise (the slurm tests then skip with the reason).
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

log() { echo "slurm-setup: $*"; }

# --- packages ------------------------------------------------------------------------
packages=(slurm-wlm munge)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# --- munge ---------------------------------------------------------------------------
$sudo mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  $sudo dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
$sudo chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
$sudo chmod 0700 /etc/munge /var/lib/munge /var/log/munge
$sudo chmod 0755 /run/munge
$sudo chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  $sudo rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
  $sudo runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n | unmunge >/dev/null
fi

# --- slurm.conf ----------------------------------------------------------------------
host=$(hostname -s)
# every installed CPU: `nproc` obeys OMP_NUM_THREADS (1 inside a process that set it, e.g. pytest with torch),
# and a node registered with fewer CPUs than a job asks for leaves the job PENDING for ever
cpus=$(getconf _NPROCESSORS_ONLN)
# leave some memory to the OS; dask-jobqueue asks for --mem, which must fit RealMemory
real_mb=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
conf_dir=/etc/slurm
$sudo mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
conf=$(cat <<EOF
# written by .ci/slurm-setup.sh: one node (this host), no cgroups, no accounting
ClusterName=uptrack-ci
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
)
if [ ! -f "$conf_dir/slurm.conf" ] || [ "$(cat "$conf_dir/slurm.conf")" != "$conf" ]; then
  log "writing $conf_dir/slurm.conf (node ${host}, ${cpus} CPUs, ${real_mb} MB)"
  echo "$conf" | $sudo tee "$conf_dir/slurm.conf" >/dev/null
  # a changed config needs fresh daemons
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      $sudo kill "$(cat "$pidfile")"
      sleep 1
    fi
  done
fi
# no cgroup.conf: slurmd 22.05 then autodetects the cgroup version and, with
# proctrack/linuxproc and task/none, puts no job into a cgroup (works in containers)

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- daemons ---------------------------------------------------------------------------
if ! running /run/slurmctld.pid; then
  log "starting slurmctld"
  $sudo /usr/sbin/slurmctld -c || true  # -c: clean start, no old job state
fi
if ! running /run/slurmd.pid; then
  log "starting slurmd"
  $sudo /usr/sbin/slurmd || true
fi

# --- wait for the node -------------------------------------------------------------------
for _ in $(seq 60); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
  case "$state" in
    idle*|mixed*|allocated*|completing*) break ;;
    down*|drain*) $sudo scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
if timeout 60 srun -N1 -n1 -t 1 true 2>/dev/null; then
  log "SLURM is up: $(sinfo -h -N -o '%N %T %c CPUs %m MB')"
  exit 0
fi
log "SLURM did not start; last lines of the logs:"
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log 2>/dev/null || true
sinfo 2>&1 || true
exit 1
