#!/usr/bin/env bash
# A SLURM cluster on this machine, with real accounting, for tests and trials:
# one node on loopback, or two nodes, each in its own network and UTS namespace.
#
#   slurm/dev-cluster.sh install            # apt packages (slurmctld, slurmd, munge, slurmdbd, MariaDB)
#   slurm/dev-cluster.sh start              # install if needed, start every daemon: one node
#   slurm/dev-cluster.sh start --nodes 2    # two nodes, node1 and node2, on a private subnet
#   slurm/dev-cluster.sh status             # daemons, node states, the SLURM_CONF to export
#   slurm/dev-cluster.sh stop               # stop every daemon, remove every namespace and link
#   slurm/dev-cluster.sh kill-node NODE     # two nodes: cut NODE off and SIGKILL all on it
#   slurm/dev-cluster.sh revive-node NODE   # two nodes: reconnect NODE and start its slurmd
#   slurm/dev-cluster.sh env                # print `export SLURM_CONF=...` for eval
#   slurm/dev-cluster.sh conf               # print the path of its slurm.conf
#
# Needs root (munge runs as the munge user; namespaces need CAP_SYS_ADMIN). No
# systemd: each daemon is started directly. Everything lives under
# $SELFSUP_SLURM_STATE (default /tmp/selfsup-slurm): configs, logs, spool,
# MariaDB data, munge key. Client commands (sbatch, squeue, sacct, scontrol)
# find the cluster through SLURM_CONF=$STATE/etc/slurm.conf; when
# /etc/slurm/slurm.conf does not exist it is linked there too, so plain
# `sbatch` works.
#
# Accounting is real: MariaDB on 127.0.0.1 behind slurmdbd, so `sacct` answers and
# submitit sees finished, failed and cancelled jobs.
#
# One node: `localhost`, everything on loopback. Two nodes: a bridge
# (selfsup-br0, $SUBNET.1/24, where slurmctld listens) and per node a network
# namespace (selfsup-node1, selfsup-node2) joined to it by a veth pair whose
# end inside is named $NODE_IFNAME (address $SUBNET.11, $SUBNET.12), and a UTS
# namespace whose hostname is the node's name; a hosts file mounted over
# /etc/hosts in the node's mount namespace resolves the node names inside. A job's tasks on the two nodes talk across
# those interfaces. The nodes share this machine's filesystem, as cluster nodes
# share NFS or Lustre. Partitions: `debug` (the default) and `urgent`, whose
# jobs preempt debug's (preempt/partition_prio, PreemptMode=REQUEUE); a lost
# node requeues its jobs (JobRequeue=1) and returns when its slurmd registers
# (ReturnToService=2). Timers are short for tests; docs/slurm.md names the
# production defaults. Traffic stays on loopback and that private subnet.
set -euo pipefail

STATE=${SELFSUP_SLURM_STATE:-/tmp/selfsup-slurm}
CLUSTER=selfsup-dev
PARTITION=debug
DB_PORT=${SELFSUP_SLURM_DB_PORT:-33061}
CONF="$STATE/etc/slurm.conf"
NODES_FILE="$STATE/nodes" # the node count of the cluster last started
# munge's standard socket place: every SLURM client (sacctmgr too) looks there.
MUNGE_SOCKET_DIR=/run/munge
MUNGE_SOCKET=$MUNGE_SOCKET_DIR/munge.socket.2
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server iproute2)
# Two nodes: a private /24 made and removed here (override when it is taken).
SUBNET=${SELFSUP_SLURM_SUBNET:-10.213.77}
BRIDGE=selfsup-br0
NODE_IFNAME=selfsup0 # each node's interface (the profile's GLOO_SOCKET_IFNAME)
TWO_NODES=(node1 node2)

log() { printf 'dev-cluster: %s\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { log "must run as root (munge runs as the munge user)"; exit 1; }; }
node_ns() { echo "selfsup-$1"; }
node_addr() { echo "$SUBNET.1${1#node}"; }
host_link() { echo "selfsup-v${1#node}"; }
nodes_started() { cat "$NODES_FILE" 2>/dev/null || echo 0; }
node_names() { if [ "$1" = 2 ]; then echo "${TWO_NODES[@]}"; else echo localhost; fi; }

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
    local nodes=$1 cpus mem ctld_addr=127.0.0.1
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 1024 ))
    [ "$nodes" = 2 ] && ctld_addr=$SUBNET.1
    mkdir -p "$STATE"/{etc,log,spool/ctld,run,munge,mysql}
    cat > "$CONF" <<EOF
# written by slurm/dev-cluster.sh: $nodes node(s)
ClusterName=$CLUSTER
SlurmctldHost=localhost($ctld_addr)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d-%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
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
MinJobAge=600
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
EOF
    if [ "$nodes" = 2 ]; then
        # Each node offers every core (they share this machine's) and half the memory.
        # Short timers, so that a lost node is noticed in seconds (production: 300, 10, 2, 30).
        cat >> "$CONF" <<EOF
SlurmdTimeout=5
MessageTimeout=3
TCPTimeout=2
KillWait=5
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=node1 NodeAddr=$(node_addr node1) CPUs=$cpus RealMemory=$((mem / 2)) State=UNKNOWN
NodeName=node2 NodeAddr=$(node_addr node2) CPUs=$cpus RealMemory=$((mem / 2)) State=UNKNOWN
PartitionName=$PARTITION Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=node[1-2] MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
    else
        cat >> "$CONF" <<EOF
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    fi
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

# --- two nodes: the private network -------------------------------------------------------

make_network() {
    ip link show "$BRIDGE" >/dev/null 2>&1 && return 0
    if ip -4 route | grep -q "^$SUBNET\."; then
        log "subnet $SUBNET.0/24 is already in use here; pick another with SELFSUP_SLURM_SUBNET=10.x.y"
        exit 1
    fi
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local node ns
    for node in "${TWO_NODES[@]}"; do
        ns=$(node_ns "$node")
        ip netns add "$ns"
        ip link add "$(host_link "$node")" type veth peer name "$NODE_IFNAME" netns "$ns"
        ip link set "$(host_link "$node")" master "$BRIDGE" up
        ip -n "$ns" addr add "$(node_addr "$node")/24" dev "$NODE_IFNAME"
        ip -n "$ns" link set "$NODE_IFNAME" up
        ip -n "$ns" link set lo up
    done
    # Mounted over /etc/hosts for the nodes' processes (start_slurmd).
    printf '127.0.0.1 localhost\n%s node1\n%s node2\n' \
        "$(node_addr node1)" "$(node_addr node2)" > "$STATE/etc/hosts"
}

remove_network() {
    local node ns
    for node in "${TWO_NODES[@]}"; do
        ns=$(node_ns "$node")
        if ip netns list | grep -qw "$ns"; then
            ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
            ip netns del "$ns"  # removes its veth pair too
        fi
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

# With NoCtldInAddrAny slurmctld listens on the address this machine's host name
# resolves to: for two nodes, the bridge's, so it reads a hosts file of its own.
start_slurmctld() {
    if [ "$1" = 1 ]; then
        /usr/sbin/slurmctld -f "$CONF"
        return
    fi
    printf '%s %s localhost\n' "$SUBNET.1" "$(hostname)" > "$STATE/etc/hosts-ctld"
    unshare --mount --propagation private sh -c \
        "mount --bind '$STATE/etc/hosts-ctld' /etc/hosts && exec /usr/sbin/slurmctld -f '$CONF'"
}

slurmd_running() {
    local pid
    pid=$(cat "$STATE/run/slurmd-$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start_slurmd() {
    local node=$1
    slurmd_running "$node" && return 0
    if [ "$node" = localhost ]; then
        mkdir -p "$STATE/spool/d-localhost"
        /usr/sbin/slurmd -f "$CONF" -N localhost
    else
        # Its own network, hostname and /etc/hosts; slurmd and every task it starts keep
        # them. (Not `ip netns exec`: it remounts /sys, hiding the cgroup tree slurmd reads.)
        mkdir -p "$STATE/spool/d-$node"
        nsenter --net="/run/netns/$(node_ns "$node")" unshare --uts --mount --propagation private \
            sh -c "mount --bind '$STATE/etc/hosts' /etc/hosts && hostname $node &&
                   exec /usr/sbin/slurmd -f '$CONF' -N $node"
    fi
}

# A lost node: its link cut first (so its peers get no goodbye from its sockets,
# as when a machine dies), then every process on it SIGKILLed, slurmd included.
two_node_name() {
    [ "$(nodes_started)" = 2 ] || { log "$1 needs the two-node cluster (start --nodes 2)"; exit 2; }
    case "$2" in node1 | node2) ;; *) log "no node '$2': the nodes are ${TWO_NODES[*]}"; exit 2 ;; esac
}

kill_node() {
    local node=$1
    two_node_name kill-node "$node"
    ip link set "$(host_link "$node")" down
    ip netns pids "$(node_ns "$node")" | xargs -r kill -9
    log "$node is lost (link down, its processes killed)"
}

revive_node() {
    local node=$1
    two_node_name revive-node "$node"
    export SLURM_CONF="$CONF"
    ip link set "$(host_link "$node")" up
    start_slurmd "$node"
    log "$node is back (slurmd started; it returns to service when it registers)"
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

nodes_ready() {
    [ "$(sinfo -h -N -o %T | grep -cE '^(idle|mixed|allocated)')" -ge "$1" ]
}

start() {
    local nodes=$1 node fresh=0
    need_root
    install
    if [ "$(nodes_started)" != "$nodes" ]; then stop_slurm; fi
    if [ "$nodes" = 2 ]; then make_network; else remove_network; fi
    write_configs "$nodes"
    echo "$nodes" > "$NODES_FILE"
    export SLURM_CONF="$CONF"
    start_munge
    start_mariadb
    pgrep -x slurmdbd >/dev/null || /usr/sbin/slurmdbd
    wait_for "slurmdbd" sacctmgr -n list cluster
    sacctmgr -i -n add cluster "$CLUSTER" >/dev/null 2>&1 || true
    for node in $(node_names "$nodes"); do slurmd_running "$node" || fresh=1; done
    pgrep -x slurmctld >/dev/null || start_slurmctld "$nodes"
    for node in $(node_names "$nodes"); do start_slurmd "$node"; done
    wait_for "slurmctld" scontrol ping
    for node in $(node_names "$nodes"); do
        scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    done
    wait_for "the nodes" nodes_ready "$nodes"
    if [ "$fresh" = 1 ]; then forget_orphaned_jobs; fi
    smoke_test "$nodes"
    log "up: $nodes node(s), partition $PARTITION, $(nproc) CPUs each; export SLURM_CONF=$CONF"
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

# Prove the cluster runs a job on every node before anyone relies on it; say why when it can't.
smoke_test() {
    local nodes=$1 out="$STATE/log/smoke.out"
    if timeout 90 sbatch --quiet --wait --time=1 --mem=100M --nodes="$nodes" --output="$out" \
        --job-name=dev-cluster-smoke --wrap="srun hostname" &&
        [ "$(sort -u "$out" | wc -l)" = "$nodes" ]; then
        return 0
    fi
    log "a one-second test job did not run on all $nodes node(s); what the cluster says:"
    cat "$out" >&2 2>/dev/null || true
    squeue -l >&2 || true
    sinfo -R >&2 || true
    tail -n 20 "$STATE"/log/slurm*.log >&2 || true
    return 1
}

stop_slurm() {
    for daemon in slurmd slurmctld; do pkill -x "$daemon" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || return 0
        sleep 0.2
    done
}

stop() {
    stop_slurm
    pkill -x slurmdbd 2>/dev/null || true
    [ -f "$STATE/run/mysqld.pid" ] && kill "$(cat "$STATE/run/mysqld.pid")" 2>/dev/null || true
    [ -f "$STATE/munge/munged.pid" ] && kill "$(cat "$STATE/munge/munged.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do
        running=0
        for daemon in slurmdbd mariadbd; do pgrep -x "$daemon" >/dev/null && running=1; done
        [ "$running" = 0 ] && break
        sleep 0.2
    done
    remove_network
    rm -f "$NODES_FILE"
    log "stopped"
}

status() {
    export SLURM_CONF="$CONF"
    for daemon in munged mariadbd slurmdbd slurmctld; do
        if pgrep -x "$daemon" >/dev/null; then echo "$daemon: running"; else echo "$daemon: stopped"; fi
    done
    for node in $(node_names "$(nodes_started)"); do
        if slurmd_running "$node"; then echo "slurmd ($node): running"; else echo "slurmd ($node): stopped"; fi
    done
    sinfo -N 2>/dev/null || true
    echo "export SLURM_CONF=$CONF"
}

nodes_option() {
    case "${1:-}:${2:-}" in
        :) echo 1 ;;
        --nodes:1 | --nodes:2) echo "$2" ;;
        *) log "start takes --nodes 1 or --nodes 2, not '$*'"; exit 2 ;;
    esac
}

command=${1:-}
shift || true
case "$command" in
    install) install ;;
    start) nodes=$(nodes_option "$@") && start "$nodes" ;;
    stop) stop ;;
    status) status ;;
    kill-node) kill_node "${1:?kill-node NODE}" ;;
    revive-node) revive_node "${1:?revive-node NODE}" ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    conf) echo "$CONF" ;;
    *) echo "usage: $0 install|start [--nodes 1|2]|stop|status|kill-node NODE|revive-node NODE|env|conf" >&2; exit 2 ;;
esac
