-- Tradeflow's dispatch script: Dramatiq 2.2's redis/dispatch.lua (LGPL-3.0,
-- Copyright (C) 2017-2020 CLEARTYPE SRL) with five additions:
--
--   * priority lanes: a queue is four lists, $namespace:$queue_name (the
--     "normal" lane, the list stock Dramatiq uses) and
--     $namespace:$queue_name:critical|high|low.  ":" cannot appear in a
--     queue name, so lane keys never collide with a queue.  The message
--     hash, ack sets and dead letters stay one per queue.
--   * wake-up: a push that makes a lane non-empty publishes on
--     $namespace:__wake__.$queue_name, so idle consumers fetch at once.
--   * enqueue_many: many messages in one call, with a marker key that lets
--     a producer whose connection broke find out whether the call ran.
--   * fetch carries the consumer's deferred acks, so a busy consumer makes
--     one call per batch instead of one per message, and admits what it
--     takes (actors/admission.py: cancelled, duplicate or poison?) in the
--     same call instead of one call per message.
--   * reclaim: a consumer puts back what its ack set holds that its process
--     does not (a fetch whose reply the connection lost).
--
-- Dramatiq's own calls (enqueue, fetch, ack, nack, requeue, qsize, purge with
-- Dramatiq's arguments) keep their meaning.
--
-- Needs Redis >= 7.0 (LMPOP).
--
-- luacheck: globals ARGV KEYS redis unpack cjson
-- dispatch(
--   args=[command, timestamp, queue_name, worker_id, heartbeat_timeout, dead_message_ttl, do_maintenance, max_unpack_size, ...],
--   keys=[namespace]
-- )

local namespace = KEYS[1]

local command = ARGV[1]
local timestamp = ARGV[2]
local queue_name = ARGV[3]
local worker_id = ARGV[4]
local heartbeat_timeout = ARGV[5]
local dead_message_ttl = ARGV[6]
local do_maintenance = ARGV[7]
local max_unpack_size = tonumber(ARGV[8])

local acks = namespace .. ":__acks__." .. worker_id
local heartbeats = namespace .. ":__heartbeats__"
redis.call("zadd", heartbeats, timestamp, worker_id)

local queue_canonical_name = queue_name
if string.sub(queue_name, -3) == ".DQ" then
    queue_canonical_name = string.sub(queue_name, 1, -4)
end

local queue_acks = acks .. "." .. queue_name
local queue_full_name = namespace .. ":" .. queue_name
local queue_messages = queue_full_name .. ".msgs"
local xqueue_full_name = namespace .. ":" .. queue_canonical_name .. ".XQ"
local xqueue_messages = xqueue_full_name .. ".msgs"
local wake_channel = namespace .. ":__wake__." .. queue_name
local lanes = {"critical", "high", "normal", "low"}

local ARGS = {}
for i=9,#ARGV do
    ARGS[i - 8] = ARGV[i]
end

local function iter_chunks(tbl)
    local len = #tbl
    local i = 1
    return function()
        if i <= len then
            local chunk = {}
            local last_idx = math.min(i + max_unpack_size - 1, len)
            for j = i, last_idx do
                table.insert(chunk, tbl[j])
            end
            i = last_idx + 1
            return chunk
        end
    end
end

-- A delay queue has one lane: its messages go to their own lane when due.
local function lane_key(lane)
    if lane == nil or lane == "" or lane == "normal" or queue_name ~= queue_canonical_name then
        return queue_full_name
    end
    return queue_full_name .. ":" .. lane
end

-- The lane a stored message belongs to, read from its own options.
local function lane_of(message_data)
    local ok, decoded = pcall(cjson.decode, message_data)
    if ok and type(decoded) == "table" and type(decoded.options) == "table" then
        local priority = decoded.options.priority
        if priority == "critical" or priority == "high" or priority == "low" then
            return priority
        end
    end
    return "normal"
end

-- Appends a message id to a lane; true when the lane was empty before.
local function push(lane, message_id)
    return redis.call("rpush", lane_key(lane), message_id) == 1
end

-- Puts a known message back on its lane (requeue, dead-worker recovery).
local function push_back(message_id)
    local message_data = redis.call("hget", queue_messages, message_id)
    if message_data then
        return push(lane_of(message_data), message_id)
    end
    return false
end

local function wake()
    redis.call("publish", wake_channel, "1")
end

-- An integer option as Python's str() writes it (admission keys must match).
local function int_text(value)
    if type(value) == "number" then
        return string.format("%d", value)
    end
    return "0"
end

-- The message id, admission key and deliveries of earlier copies that died, of a
-- stored message (nil if it is not a message):
-- <ns>:admit:<message id>:<audit seq base>:<retries>[:<admission salt>].
local function admission_key(message_data)
    local ok, decoded = pcall(cjson.decode, message_data)
    if not ok or type(decoded) ~= "table" or type(decoded.message_id) ~= "string" then
        return nil
    end
    local options = decoded.options
    if type(options) ~= "table" then
        options = {}
    end
    local key = namespace .. ":admit:" .. decoded.message_id .. ":" ..
        int_text(options.audit_seq_base) .. ":" .. int_text(options.retries)
    if type(options.admission_salt) == "string" then
        key = key .. ":" .. options.admission_salt
    end
    return decoded.message_id, key, tonumber(int_text(options.prior_deliveries))
end

-- The admission of one stored message (see actors/admission.py): "run:N"
-- (N-th delivery), "cancelled:0", "duplicate:0" or "poison:N".
local function admit(message_id, message_data, ttl, max_deliveries)
    local id, key, prior = admission_key(message_data)
    if not id then
        return "run:1" -- the worker reports what is wrong with it
    end
    if redis.call("exists", namespace .. ":cancel:" .. id) == 1 then
        return "cancelled:0"
    end
    local owner = redis.call("hget", key, "rid")
    if owner and owner ~= message_id then
        return "duplicate:0"
    end
    local deliveries = redis.call("hincrby", key, "deliveries", 1) + prior
    if not owner then
        redis.call("hset", key, "rid", message_id)
    end
    redis.call("pexpire", key, ttl)
    if deliveries > max_deliveries then
        return "poison:" .. (deliveries - 1)
    end
    return "run:" .. deliveries
end

-- Undoes the admission of a message taken but never started (requeued).
local function unadmit(message_id)
    local id, key = admission_key(redis.call("hget", queue_messages, message_id) or "")
    if id and redis.call("hget", key, "rid") == message_id then
        redis.call("hincrby", key, "deliveries", -1)
    end
end

if do_maintenance == "1" then
    local woken = false
    local dead_workers = redis.call("zrangebyscore", heartbeats, 0, timestamp - heartbeat_timeout)
    for i=1,#dead_workers do
        local dead_worker = dead_workers[i]
        local dead_worker_acks = namespace .. ":__acks__." .. dead_worker
        local dead_worker_queue_acks = dead_worker_acks .. "." .. queue_name
        local message_ids = redis.call("smembers", dead_worker_queue_acks)
        if next(message_ids) then
            for _, message_id in ipairs(message_ids) do
                woken = push_back(message_id) or woken
            end
            redis.call("del", dead_worker_queue_acks)
        end

        local ack_queues = redis.call("keys", dead_worker_acks .. "*")
        if not next(ack_queues) then
            redis.call("zrem", heartbeats, dead_worker)
        end
    end
    if woken then
        wake()
    end

    local dead_message_ids = redis.call("zrangebyscore", xqueue_full_name, 0, timestamp - dead_message_ttl)
    if next(dead_message_ids) then
        for dead_message_ids_batch in iter_chunks(dead_message_ids) do
            redis.call("zrem", xqueue_full_name, unpack(dead_message_ids_batch))
            redis.call("hdel", xqueue_messages, unpack(dead_message_ids_batch))
        end
    end
end


-- enqueue(message_id, message_data[, lane]): without a lane (Dramatiq's own
-- call), the lane the message's priority option names.
if command == "enqueue" then
    redis.call("hset", queue_messages, ARGS[1], ARGS[2])
    if push(ARGS[3] or lane_of(ARGS[2]), ARGS[1]) then
        wake()
    end


-- enqueue_many(marker_key, marker_ttl_ms, message_id, message_data, lane, ...)
-- The marker makes a call idempotent (a client retry after a broken
-- connection stores nothing twice) and tells a producer it ran.
elseif command == "enqueue_many" then
    if not redis.call("set", ARGS[1], "1", "NX", "PX", ARGS[2]) then
        return 0
    end
    local woken = false
    for i = 3, #ARGS, 3 do
        redis.call("hset", queue_messages, ARGS[i], ARGS[i + 1])
        woken = push(ARGS[i + 2], ARGS[i]) or woken
    end
    if woken then
        wake()
    end


-- revive_many(marker_key, marker_ttl_ms, reasons_key, dead_id, message_id, message_data, lane, ...)
-- Dead letters of this queue back on it as fresh messages, all in one atomic call
-- (a crash leaves each letter either dead or enqueued, never both nor neither):
-- a letter still in the dead-letter queue leaves it, with its body and its reason,
-- and its fresh message is stored and pushed; one retried or purged meanwhile by
-- someone else is left alone.  Returns one character per letter, "1" revived or
-- "0" gone already, and keeps that answer in the marker, which makes a client
-- retry idempotent and tells a client whose connection broke what happened.
elseif command == "revive_many" then
    local done = redis.call("get", ARGS[1])
    if done then
        return done
    end
    local reasons = ARGS[3]
    local outcome = {}
    local woken = false
    for i = 4, #ARGS, 4 do
        if redis.call("zrem", xqueue_full_name, ARGS[i]) == 1 then
            redis.call("hdel", xqueue_messages, ARGS[i])
            redis.call("hdel", reasons, ARGS[i])
            redis.call("hset", queue_messages, ARGS[i + 1], ARGS[i + 2])
            woken = push(ARGS[i + 3], ARGS[i + 1]) or woken
            outcome[#outcome + 1] = "1"
        else
            outcome[#outcome + 1] = "0"
        end
    end
    local answer = table.concat(outcome)
    redis.call("set", ARGS[1], answer, "PX", ARGS[2])
    if woken then
        wake()
    end
    return answer


-- fetch(prefetch[, admit_ttl, max_deliveries, n_acks, ack_id * n_acks, lane, ...]):
-- first ack the messages named (the consumer's deferred acks), then take up
-- to $prefetch messages, taking the lanes in the order given (default:
-- critical, high, normal, low).  With admit_ttl > 0 each message taken is
-- admitted too, and the reply is data, verdict, data, verdict, ...
-- fetch(prefetch) alone is Dramatiq's call: no acks, no admission, no foreign-id trailer.
elseif command == "fetch" then
    local admit_ttl = tonumber(ARGS[2]) or 0
    local max_deliveries = tonumber(ARGS[3]) or 0
    local n_acks = tonumber(ARGS[4]) or 0
    for i = 5, n_acks + 4 do
        if redis.call("srem", queue_acks, ARGS[i]) > 0 then
            redis.call("hdel", queue_messages, ARGS[i])
        end
    end
    local prefetch = math.min(tonumber(ARGS[1]), max_unpack_size)
    if prefetch <= 0 then
        return {}
    end
    -- a paused queue keeps its messages and hands out none (its delay queue still
    -- moves due messages into it, where they wait for the resume)
    if queue_name == queue_canonical_name and redis.call("sismember", namespace .. ":__paused__", queue_name) == 1 then
        return {}
    end
    local order = {}
    if #ARGS > n_acks + 4 then
        for i = n_acks + 5, #ARGS do
            order[#order + 1] = lane_key(ARGS[i])
        end
    else
        for i = 1, #lanes do
            order[i] = lane_key(lanes[i])
        end
    end

    local message_ids = {}
    local first = 1
    while #message_ids < prefetch and first <= #order do
        local lmpop_args = {#order - first + 1}
        for i = first, #order do
            table.insert(lmpop_args, order[i])
        end
        table.insert(lmpop_args, "LEFT")
        table.insert(lmpop_args, "COUNT")
        table.insert(lmpop_args, prefetch - #message_ids)
        local popped = redis.call("lmpop", unpack(lmpop_args))
        if not popped then
            break
        end
        for _, message_id in ipairs(popped[2]) do
            table.insert(message_ids, message_id)
        end
        -- LMPOP took from the first non-empty lane: go on after it.
        for i = first, #order do
            if order[i] == popped[1] then
                first = i + 1
                break
            end
        end
    end

    if next(message_ids) == nil then
        return {}
    end
    redis.call("sadd", queue_acks, unpack(message_ids))
    local messages = redis.call("hmget", queue_messages, unpack(message_ids))
    -- A message written by a producer that is not Dramatiq (docs/producers.md)
    -- may lack the redis_message_id option, which the consumer needs to ack
    -- it: the reply then ends with a table {index, id, index, id, ...} naming
    -- the entries that lack it and the hash field each was stored under.
    local foreign = {}
    for i, message_data in ipairs(messages) do
        if message_data and not string.find(message_data, '"redis_message_id"', 1, true) then
            foreign[#foreign + 1] = i
            foreign[#foreign + 1] = message_ids[i]
        end
    end
    local reply = messages
    if admit_ttl > 0 then
        reply = {}
        for i, message_data in ipairs(messages) do
            reply[2 * i - 1] = message_data
            reply[2 * i] = message_data and admit(message_ids[i], message_data, admit_ttl, max_deliveries) or "run:1"
        end
    end
    -- Dramatiq's own fetch(prefetch) gets plain data, as Dramatiq's script returns
    if #foreign > 0 and ARGS[2] ~= nil then
        reply[#reply + 1] = foreign
    end
    return reply


elseif command == "requeue" or command == "requeue_admitted" then
    local woken = false
    for i=1,#ARGS do
        local message_id = ARGS[i]
        if redis.call("srem", queue_acks, message_id) > 0 then
            if command == "requeue_admitted" then
                unadmit(message_id)
            end
            woken = push_back(message_id) or woken
        end
    end
    if woken then
        wake()
    end


-- reclaim(admitted, held_id, ...): puts back every message of this worker's
-- ack set of the queue that the worker does not hold: taken by a fetch whose
-- reply was lost, or left by a requeue that failed.  admitted = "1" undoes
-- their admission (they never started).  Returns how many it put back.
elseif command == "reclaim" then
    local held = {}
    for i = 2, #ARGS do
        held[ARGS[i]] = true
    end
    local woken, reclaimed = false, 0
    for _, message_id in ipairs(redis.call("smembers", queue_acks)) do
        if not held[message_id] then
            if ARGS[1] == "1" then
                unadmit(message_id)
            end
            redis.call("srem", queue_acks, message_id)
            woken = push_back(message_id) or woken
            reclaimed = reclaimed + 1
        end
    end
    if woken then
        wake()
    end
    return reclaimed


elseif command == "ack" then
    local message_id = ARGS[1]

    if redis.call("srem", queue_acks, message_id) > 0 then
        redis.call("hdel", queue_messages, message_id)
    end


elseif command == "nack" then
    local message_id = ARGS[1]

    if redis.call("srem", queue_acks, message_id) > 0 then
        local message = redis.call("hget", queue_messages, message_id)
        if message then
            redis.call("zadd", xqueue_full_name, timestamp, message_id)
            redis.call("hset", xqueue_messages, message_id, message)
            redis.call("hdel", queue_messages, message_id)
        end
    end


elseif command == "purge" then
    redis.call("del", queue_acks, queue_messages, xqueue_full_name, xqueue_messages)
    for i = 1, #lanes do
        redis.call("del", lane_key(lanes[i]))
    end


elseif command == "qsize" then
    local q_aks = acks .. "." .. queue_canonical_name
    local q_fn = namespace .. ":" .. queue_canonical_name
    local q_msgs = q_fn .. ".msgs"
    local dq_q_aks = q_aks .. ".DQ"
    local dq_q_msgs = q_fn .. ".DQ" .. ".msgs"

    return redis.call("hlen", dq_q_msgs) +
           redis.call("scard", dq_q_aks) +
           redis.call("hlen", q_msgs) +
           redis.call("scard", q_aks)

end
