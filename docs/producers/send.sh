#!/bin/sh
# Enqueue one tradeflow job with nothing but redis-cli: the commands any Redis
# client (Go, Rust, Java, ...) sends.  See docs/producers.md.
#
#   sh send.sh REDIS_URL NAMESPACE QUEUE ACTOR ARGS_JSON
#   sh send.sh redis://127.0.0.1:6379/0 tradeflow system ping '["hello"]'
#
# Prints the message id (the job's id in `tradeflow jobs show`).
set -eu
if [ $# -ne 5 ]; then
    echo "usage: $0 REDIS_URL NAMESPACE QUEUE ACTOR ARGS_JSON" >&2
    exit 2
fi
url=$1 namespace=$2 queue=$3 actor=$4 args=$5
id=$(cat /proc/sys/kernel/random/uuid)
now_ms=$(date +%s%3N)
message="{\"queue_name\":\"$queue\",\"actor_name\":\"$actor\",\"args\":$args,\"kwargs\":{},\"options\":{},\"message_id\":\"$id\",\"message_timestamp\":$now_ms}"
# The body first, then its id on the queue: a worker never sees an id without a body.
redis-cli -u "$url" HSET "$namespace:$queue.msgs" "$id" "$message" >/dev/null
redis-cli -u "$url" RPUSH "$namespace:$queue" "$id" >/dev/null
# Optional: idle workers fetch at once instead of at their next poll (1 s).
redis-cli -u "$url" PUBLISH "$namespace:__wake__.$queue" 1 >/dev/null
echo "$id"
