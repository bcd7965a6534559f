#!/usr/bin/env bash
# Bring up a two-node SLURM on this machine, for the tests and for trying `--executor slurm` without a cluster:
# munge, MariaDB + slurmdbd (accounting, so that sacct and submitit read job states as on a real cluster),
# slurmctld, and one slurmd per node. Each node is a network namespace of its own (node1 10.99.0.2, node2
# 10.99.0.3, hostname set in its own UTS namespace) on a bridge with slurmctld at 10.99.0.1: jobs across the two
# talk over a network, as on a cluster, and no traffic leaves this machine. Started directly (no systemd); needs
# root; installs Debian's packages when missing. MaxArraySize is set low (4) so that the tests see arrays split.
# What it starts is recorded in $ROADMAP_SLURM_STATE/pids; down.sh stops exactly that.
set -euo pipefail
STATE=${ROADMAP_SLURM_STATE:-/var/tmp/roadmap-slurm}
log() { echo "[slurm up] $*"; }

if [ -s "$STATE/pids" ] && sinfo -h >/dev/null 2>&1; then
  log "already up ($STATE/pids)"; exit 0
fi

packages=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server iproute2 util-linux)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # keep the packages' own service scripts from starting anything: this script starts what it needs itself
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d; policy_added=1; fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# a fresh cluster each time: no jobs of an earlier bring-up in the queue or in the accounting database
rm -rf "$STATE"
mkdir -p "$STATE"/{log,spool,state,run}
: > "$STATE/pids"
remember() { echo "$1 $2" >> "$STATE/pids"; }   # name pid
wait_for() {  # seconds, description, test command...
  local n=$1 what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  log "gave up waiting for $what"; return 1
}

# munge: the key and the daemon, as the munge user
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
rm -f /run/munge/munged.pid
runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
wait_for 10 munged test -s /run/munge/munged.pid
remember munged "$(cat /run/munge/munged.pid)"

# MariaDB for slurmdbd, on loopback, with its data under $STATE
mkdir -p "$STATE/mysql" && chown mysql:mysql "$STATE/mysql"
mariadb-install-db --user=mysql --datadir="$STATE/mysql" --skip-test-db >"$STATE/log/mysql-install.log" 2>&1
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld "$STATE/run"
chmod 777 "$STATE/run"
setsid /usr/sbin/mariadbd --user=mysql --datadir="$STATE/mysql" --socket="$STATE/run/mysql.sock" \
  --pid-file="$STATE/run/mysql.pid" --bind-address=127.0.0.1 --port=3306 \
  </dev/null >"$STATE/log/mysql.log" 2>&1 &
wait_for 30 mariadb test -S "$STATE/run/mysql.sock"
remember mariadbd "$(cat "$STATE/run/mysql.pid" 2>/dev/null || echo $!)"
mariadb -S "$STATE/run/mysql.sock" -u root <<'SQL'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
mkdir -p /etc/slurm

# the network: a bridge for slurmctld, a namespace and a veth pair per node, their names in /etc/hosts
# A bring-up that was not taken down (the machine restarted, down.sh never ran) leaves its links and namespaces.
# Delete each veth by its host end: that removes both ends at once, whereas deleting only the namespace frees its
# end later, in the background, and re-adding the pair would then race it ("RTNETLINK answers: File exists").
ip link del roadmap-br 2>/dev/null || true
for i in 1 2; do
  ip netns pids "roadmap-node$i" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip link del "roadmap-v$i" 2>/dev/null || true
  ip netns del "roadmap-node$i" 2>/dev/null || true
done
ip link add name roadmap-br type bridge
ip addr add 10.99.0.1/24 dev roadmap-br
ip link set roadmap-br up
echo "bridge roadmap-br" >> "$STATE/pids"
for i in 1 2; do
  ip netns add "roadmap-node$i"
  ip link add "roadmap-v$i" type veth peer name eth0 netns "roadmap-node$i"
  ip link set "roadmap-v$i" master roadmap-br
  ip link set "roadmap-v$i" up
  ip netns exec "roadmap-node$i" ip addr add "10.99.0.$((i + 1))/24" dev eth0
  ip netns exec "roadmap-node$i" ip link set eth0 up
  ip netns exec "roadmap-node$i" ip link set lo up
  echo "netns roadmap-node$i" >> "$STATE/pids"
done
sed -i '/# roadmap-local-cluster$/d' /etc/hosts
printf '10.99.0.1 %s-ctl # roadmap-local-cluster\n10.99.0.2 node1 # roadmap-local-cluster\n10.99.0.3 node2 # roadmap-local-cluster\n' "$host" >> /etc/hosts
echo "hosts /etc/hosts" >> "$STATE/pids"

# Both nodes are this machine's cores: two jobs of 2 threads each on 2 cores oversubscribe them, and OpenMP's
# threads, which spin while they wait, then ran a training step 7× slower than two that yield (measured). A real
# cluster's nodes do not share cores; here every task is told to yield (the task prolog's lines set its environment).
cat > "$STATE/task-prolog.sh" <<'PROLOG'
#!/bin/sh
echo "export OMP_WAIT_POLICY=PASSIVE"
PROLOG
chmod +x "$STATE/task-prolog.sh"

cat > /etc/slurm/slurm.conf <<CONF
# written by convnext-roadmap's slurm/local-cluster/up.sh: two nodes of this machine, $cpus CPUs each, no GPUs
ClusterName=roadmap
SlurmctldHost=$host(10.99.0.1)
AuthType=auth/munge
SlurmUser=root
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.%n.log
MaxArraySize=4
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog=$STATE/task-prolog.sh
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
NodeName=node1 NodeAddr=10.99.0.2 CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=node2 NodeAddr=10.99.0.3 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/slurmdbd.conf <<CONF
# written by convnext-roadmap's slurm/local-cluster/up.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
CONF
chmod 600 /etc/slurm/slurmdbd.conf
slurmdbd
wait_for 30 slurmdbd test -s "$STATE/run/slurmdbd.pid"
remember slurmdbd "$(cat "$STATE/run/slurmdbd.pid")"
wait_for 30 "slurmdbd to answer" sacctmgr -n list cluster

sacctmgr -i add cluster roadmap >/dev/null 2>&1 || true

slurmctld -c
wait_for 30 slurmctld test -s "$STATE/run/slurmctld.pid"
remember slurmctld "$(cat "$STATE/run/slurmctld.pid")"
for node in node1 node2; do
  mkdir -p "$STATE/spool/$node"
  i=${node#node}
  # its own network and its own hostname (slurmd finds its NodeName from it); nsenter, not `ip netns exec`, which
  # would mount a /sys without the cgroup filesystem that slurmd needs
  nsenter --net="/run/netns/roadmap-node$i" unshare --uts sh -c "hostname $node && exec slurmd"
  wait_for 30 "slurmd on $node" test -s "$STATE/run/slurmd.$node.pid"
  remember "slurmd-$node" "$(cat "$STATE/run/slurmd.$node.pid")"
done

nodes_idle() { [ "$(sinfo -h -o %t | sort -u)" = idle ] && [ "$(sinfo -h -o %D)" = 2 ]; }
if ! wait_for 60 "the nodes to be idle" nodes_idle; then
  scontrol update nodename=node1,node2 state=resume || true
  wait_for 30 "the nodes to be idle" nodes_idle
fi
log "up: $(sinfo -h -o '%P %D nodes %t, %c CPUs each')"
