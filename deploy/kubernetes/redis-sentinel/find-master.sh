# Prints the name of the master that the sentinels know as $MASTER_NAME: the first of the set's
# three pods whose sentinel answers tells. When none does (the set's first start, or all of it
# starting again at once), the master is pod 0, and its data the set's.
for i in 0 1 2; do
  answer=$(timeout 3 redis-cli -h "$SERVICE-$i.$SERVICE" -p 26379 --raw \
    sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null)
  host=$(echo "$answer" | sed -n 1p)
  if [ -n "$host" ] && [ "$(echo "$answer" | sed -n 2p)" = 6379 ]; then
    echo "$host"
    exit 0
  fi
done
echo "$SERVICE-0.$SERVICE"
