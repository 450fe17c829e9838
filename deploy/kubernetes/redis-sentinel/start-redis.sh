# This pod's Redis, with the settings and the ACL given as arguments: the master if the
# sentinels say it is (or, when none answers, if this is pod 0), else a replica of the master.
# After a failover the sentinels reconfigure it themselves.
set -eu
me="$POD_NAME.$SERVICE"
master=$(sh /scripts/find-master.sh)
if [ "$master" = "$me" ]; then
  exec redis-server "$@" --replica-announce-ip "$me"
fi
exec redis-server "$@" --replica-announce-ip "$me" --replicaof "$master" 6379
