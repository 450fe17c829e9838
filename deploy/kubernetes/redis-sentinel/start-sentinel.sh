# This pod's sentinel, watching the master that the sentinels name (see find-master.sh). Its
# config is written afresh at each start, on the pod's own volume: a sentinel rewrites it as it
# learns about the replicas and the other sentinels.
set -eu
me="$POD_NAME.$SERVICE"
master=$(sh /scripts/find-master.sh)
umask 077   # the file holds the user internal's password
cat > /sentinel/sentinel.conf <<CONFIG
port 26379
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $me
sentinel monitor $MASTER_NAME $master 6379 2
sentinel auth-user $MASTER_NAME internal
sentinel auth-pass $MASTER_NAME $REDIS_INTERNAL_PASSWORD
sentinel down-after-milliseconds $MASTER_NAME 5000
sentinel failover-timeout $MASTER_NAME 60000
sentinel parallel-syncs $MASTER_NAME 1
CONFIG
exec redis-server /sentinel/sentinel.conf --sentinel
