#!/usr/bin/env bash
# A one-node SLURM cluster on loopback, with real accounting, for tests and trials.
#
#   slurm/dev-cluster.sh install   # apt packages (slurmctld, slurmd, munge, slurmdbd, MariaDB)
#   slurm/dev-cluster.sh start     # install if needed, then start every daemon
#   slurm/dev-cluster.sh status    # daemons, node state, the SLURM_CONF to export
#   slurm/dev-cluster.sh stop      # stop every daemon (state stays in $STATE)
#   slurm/dev-cluster.sh env       # print `export SLURM_CONF=...` for eval
#   slurm/dev-cluster.sh conf      # print the path of its slurm.conf
#
# Needs root (munge runs as the munge user). No systemd: each daemon is started
# directly. Everything lives under $SELFSUP_SLURM_STATE (default
# /tmp/selfsup-slurm): configs, logs, spool, MariaDB data, munge socket and key.
# Client commands (sbatch, squeue, sacct, scontrol) find the cluster through
# SLURM_CONF=$STATE/etc/slurm.conf; when /etc/slurm/slurm.conf does not exist it
# is linked there too, so plain `sbatch` works.
#
# Accounting is real: MariaDB on 127.0.0.1 behind slurmdbd, so `sacct` answers and
# submitit sees finished, failed and cancelled jobs. All traffic stays on loopback.
set -euo pipefail

STATE=${SELFSUP_SLURM_STATE:-/tmp/selfsup-slurm}
CLUSTER=selfsup-dev
PARTITION=debug
DB_PORT=${SELFSUP_SLURM_DB_PORT:-33061}
CONF="$STATE/etc/slurm.conf"
# munge's standard socket place: every SLURM client (sacctmgr too) looks there.
MUNGE_SOCKET_DIR=/run/munge
MUNGE_SOCKET=$MUNGE_SOCKET_DIR/munge.socket.2
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

log() { printf 'dev-cluster: %s\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { log "must run as root (munge runs as the munge user)"; exit 1; }; }

install() {
    need_root
    local missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        apt-get update -qq
        # policy-rc.d: the packages' postinst scripts must not start daemons themselves.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        rm -f /usr/sbin/policy-rc.d
    fi
}

write_configs() {
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 1024 ))
    mkdir -p "$STATE"/{etc,log,spool/ctld,spool/d,run,munge,mysql}
    cat > "$CONF" <<EOF
# written by slurm/dev-cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
JobRequeue=1
KillWait=10
MinJobAge=600
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    cat > "$STATE/etc/slurmdbd.conf" <<EOF
# written by slurm/dev-cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$STATE/etc/slurmdbd.conf"
    if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink -f /etc/slurm/slurm.conf)" = "$(readlink -f "$CONF")" ]; then
        mkdir -p /etc/slurm
        ln -sf "$CONF" /etc/slurm/slurm.conf
        ln -sf "$STATE/etc/slurmdbd.conf" /etc/slurm/slurmdbd.conf
    fi
}

start_munge() {
    if [ -S "$MUNGE_SOCKET" ] && pgrep -x munged >/dev/null; then return; fi
    mkdir -p "$MUNGE_SOCKET_DIR"
    chown munge:munge "$MUNGE_SOCKET_DIR" "$STATE/munge" && chmod 0755 "$MUNGE_SOCKET_DIR" "$STATE/munge"
    if [ ! -s "$STATE/munge/munge.key" ]; then
        dd if=/dev/urandom bs=1 count=1024 of="$STATE/munge/munge.key" status=none
    fi
    chown munge:munge "$STATE/munge/munge.key" && chmod 0600 "$STATE/munge/munge.key"
    runuser -u munge -- /usr/sbin/munged --force \
        --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
}

start_mariadb() {
    if mariadb-admin --host=127.0.0.1 --port="$DB_PORT" --user=slurm --password=slurm ping >/dev/null 2>&1; then return; fi
    if [ ! -d "$STATE/mysql/mysql" ]; then
        mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket >/dev/null
    fi
    mariadbd --user=root --datadir="$STATE/mysql" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --socket="$STATE/run/mysqld.sock" --pid-file="$STATE/run/mysqld.pid" \
        --log-error="$STATE/log/mariadb.log" --skip-name-resolve >/dev/null 2>&1 &
    wait_for "MariaDB" mariadb-admin --socket="$STATE/run/mysqld.sock" ping
    mariadb --socket="$STATE/run/mysqld.sock" <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

wait_for() {
    local what=$1; shift
    for _ in $(seq 1 100); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "$what did not come up; logs in $STATE/log"
    return 1
}

start() {
    need_root
    install
    write_configs
    export SLURM_CONF="$CONF"
    start_munge
    start_mariadb
    pgrep -x slurmdbd >/dev/null || /usr/sbin/slurmdbd
    wait_for "slurmdbd" sacctmgr -n list cluster
    sacctmgr -i -n add cluster "$CLUSTER" >/dev/null 2>&1 || true
    local fresh=0
    pgrep -x slurmd >/dev/null || fresh=1
    pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -f "$CONF"
    pgrep -x slurmd >/dev/null || /usr/sbin/slurmd -f "$CONF" -N localhost
    wait_for "slurmctld" scontrol ping
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    wait_for "the node" sh -c "sinfo -h -n localhost -o %T | grep -qE '^(idle|mixed|allocated)'"
    if [ "$fresh" = 1 ]; then forget_orphaned_jobs; fi
    smoke_test
    log "up: partition $PARTITION, $(nproc) CPUs; export SLURM_CONF=$CONF"
}

# slurmctld keeps its queue across restarts (job ids stay unique, so run
# directories keyed by job id never collide). But when slurmd was down, every
# job recorded as running lost its processes with it, and the controller would
# hold the node for them until their time limit. Cancel them.
forget_orphaned_jobs() {
    local jobs
    jobs=$(squeue -h -o %A | tr '\n' ' ')
    [ -n "${jobs// /}" ] || return 0
    log "cancelling jobs left from before the restart: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs || true
    wait_for "an empty queue" sh -c '[ -z "$(squeue -h -o %A)" ]'
}

# Prove the cluster runs a job before anyone relies on it; say why when it can't.
smoke_test() {
    if timeout 90 sbatch --quiet --wait --time=1 --mem=100M --output=/dev/null \
        --job-name=dev-cluster-smoke --wrap=true; then
        return 0
    fi
    log "a one-second test job did not complete; what the cluster says:"
    squeue -l >&2 || true
    sinfo -R >&2 || true
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    return 1
}

stop() {
    for daemon in slurmd slurmctld slurmdbd; do pkill -x "$daemon" 2>/dev/null || true; done
    [ -f "$STATE/run/mysqld.pid" ] && kill "$(cat "$STATE/run/mysqld.pid")" 2>/dev/null || true
    [ -f "$STATE/munge/munged.pid" ] && kill "$(cat "$STATE/munge/munged.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do
        running=0
        for daemon in slurmd slurmctld slurmdbd mariadbd; do pgrep -x "$daemon" >/dev/null && running=1; done
        [ "$running" = 0 ] && break
        sleep 0.2
    done
    log "stopped"
}

status() {
    export SLURM_CONF="$CONF"
    for daemon in munged mariadbd slurmdbd slurmctld slurmd; do
        if pgrep -x "$daemon" >/dev/null; then echo "$daemon: running"; else echo "$daemon: stopped"; fi
    done
    sinfo 2>/dev/null || true
    echo "export SLURM_CONF=$CONF"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    conf) echo "$CONF" ;;
    *) echo "usage: $0 install|start|stop|status|env|conf" >&2; exit 2 ;;
esac
