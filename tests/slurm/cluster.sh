#!/usr/bin/env bash
# Start (or stop) a real one-node Slurm 22.05 cluster on this machine for the tests:
# munge, MariaDB + slurmdbd (the executor plugin polls sacct), slurmctld and slurmd.
# Needs root and Debian's slurm-wlm munge slurmdbd mariadb-server (.ci/run installs them).
# Usage: cluster.sh start|stop    State and logs live under $SLURM_TEST_DIR (/tmp/dchag-slurm).
set -euo pipefail
DIR=${SLURM_TEST_DIR:-/tmp/dchag-slurm}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

stop() {
    for d in slurmd slurmctld slurmdbd; do pkill -x "$d" 2>/dev/null || true; done
    if [ -f /run/mysqld/dchag.pid ]; then kill "$(cat /run/mysqld/dchag.pid)" 2>/dev/null || true; fi
    pkill -x munged 2>/dev/null || true
    sleep 1
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
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
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
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=60 State=UP
EOF
    /usr/sbin/slurmdbd
    wait_for 30 sacctmgr -n list cluster
    sacctmgr -i add cluster dchag >/dev/null 2>&1 || true
    sacctmgr -i add account dchagtest cluster=dchag >/dev/null 2>&1 || true
    sacctmgr -i add user root account=dchagtest cluster=dchag >/dev/null 2>&1 || true
    /usr/sbin/slurmctld
    /usr/sbin/slurmd
    wait_for 30 sh -c "sinfo -h -o %t | grep -q idle"
    echo "cluster.sh: one node ($HOST, $CPUS CPUs, $MEM_MB MB) idle in partition cpu, account dchagtest"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
