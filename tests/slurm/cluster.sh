#!/usr/bin/env bash
# Start (or stop) a real two-node Slurm 22.05 cluster on this machine for the tests: munge,
# MariaDB + slurmdbd (the executor plugin polls sacct) and slurmctld in this namespace, and two
# compute nodes n1 and n2, each a network + UTS namespace with its own address and host name
# (as on a cluster; the file system stays shared, as a parallel file system is). A bridge
# (dchagbr0, 10.77.0.1/24) joins them; /etc/hosts maps n1 and n2 to their addresses.
# Needs root, iproute2 and Debian's slurm-wlm munge slurmdbd mariadb-server (.ci/run installs them).
# Usage: cluster.sh start|stop    State and logs live under $SLURM_TEST_DIR (/tmp/dchag-slurm).
set -euo pipefail
DIR=${SLURM_TEST_DIR:-/tmp/dchag-slurm}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
BRIDGE=dchagbr0
NET=10.77.0
NODES="n1 n2"

stop() {
    for d in slurmd slurmctld slurmdbd; do pkill -x "$d" 2>/dev/null || true; done
    if [ -f /run/mysqld/dchag.pid ]; then kill "$(cat /run/mysqld/dchag.pid)" 2>/dev/null || true; fi
    pkill -x munged 2>/dev/null || true
    sleep 1
    for n in $NODES; do ip netns del "$n" 2>/dev/null || true; done
    ip link del "$BRIDGE" 2>/dev/null || true
    sed -i '/# dchag-slurm$/d' /etc/hosts
}

network() {  # the bridge in this namespace, one namespace per node with its own address
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local k=0
    for n in $NODES; do
        k=$((k + 1))
        ip netns add "$n"
        ip link add "veth-$n" type veth peer name eth0 netns "$n"
        ip link set "veth-$n" master "$BRIDGE"
        ip link set "veth-$n" up
        ip -n "$n" addr add "$NET.1$k/24" dev eth0
        ip -n "$n" link set eth0 up
        ip -n "$n" link set lo up
        echo "$NET.1$k $n # dchag-slurm" >>/etc/hosts
    done
}

wait_for() {  # wait_for SECONDS COMMAND...: retry until the command succeeds
    local limit=$1; shift
    for _ in $(seq "$((limit * 4))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    echo "cluster.sh: timed out waiting for: $*" >&2
    return 1
}

start() {
    stop
    mkdir -p "$DIR"/{spool,state,log,run,mysql}
    # munge
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
    su -s /bin/sh munge -c "/usr/sbin/munged --force"
    wait_for 10 munge -n
    network
    # MariaDB for slurmdbd (accounting: sacct)
    chown -R mysql:mysql "$DIR/mysql"
    if [ ! -d "$DIR/mysql/mysql" ]; then
        mariadb-install-db --user=mysql --datadir="$DIR/mysql" --auth-root-authentication-method=normal >"$DIR/log/mysql-install.log" 2>&1
    fi
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    (mariadbd --user=mysql --datadir="$DIR/mysql" --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/dchag.pid \
        --skip-networking=0 --bind-address=127.0.0.1 --port=3306 >"$DIR/log/mysql.log" 2>&1 &)
    wait_for 30 mariadb -uroot -e "select 1"
    mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; \
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm'; \
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    mkdir -p /etc/slurm
    cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 /etc/slurm/slurmdbd.conf
    # slurm.conf must sit at /etc/slurm: the executor plugin's job step strips SLURM_CONF
    cat >/etc/slurm/slurm.conf <<EOF
ClusterName=dchag
SlurmctldHost=$HOST($NET.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
KillWait=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/none
NodeName=n1 NodeAddr=$NET.11 NodeHostname=n1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=n2 NodeAddr=$NET.12 NodeHostname=n2 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=n1,n2 Default=YES MaxTime=60 State=UP
EOF
    /usr/sbin/slurmdbd
    wait_for 30 sacctmgr -n list cluster
    sacctmgr -i add cluster dchag >/dev/null 2>&1 || true
    sacctmgr -i add account dchagtest cluster=dchag >/dev/null 2>&1 || true
    sacctmgr -i add user root account=dchagtest cluster=dchag >/dev/null 2>&1 || true
    /usr/sbin/slurmctld
    for n in $NODES; do  # nsenter, not `ip netns exec`: that remounts /sys and slurmd loses its cgroups
        mkdir -p "$DIR/spool/$n"
        nsenter --net="/run/netns/$n" unshare --uts sh -c "hostname $n; exec /usr/sbin/slurmd -N $n"
    done
    wait_for 30 sh -c "[ \"\$(sinfo -h -N -o %t | grep -c idle)\" = 2 ]"
    echo "cluster.sh: nodes n1, n2 ($CPUS CPUs, $MEM_MB MB each) idle in partition cpu, account dchagtest"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
