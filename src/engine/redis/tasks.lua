-- Task queue scripts of the Redis engine. Each script is this common part
-- followed by one body; ARGV[1] is the key prefix. Keys (prefix P):
--   P..'task:'..id  hash: v (record JSON at submit), type, score, timeout,
--                   max, dedup, sub, submitter, state, attempt, node,
--                   worker, lease, updated, progress, message, result, error,
--                   prev (node|worker whose lease expired, passed over once)
--   P..'q:'..type   zset of queued ids, score (9 - priority) * 1e13 + seq
--   P..'staged'     zset of new ids not yet claimable, by when a reaper
--                   releases them if their node does not (ms)
--   P..'types'      set of types with queued tasks
--   P..'leases'     zset of assigned ids by lease end (ms)
--   P..'delayed'    zset of failed ids by retry time (ms)
--   P..'waiting'    queued + backing off, for tasks.max_queued
--   P..'seq'        submission counter
--   P..'dedup:'..k  id of the unfinished task with dedup key k
local P = ARGV[1]

-- Leases and retry times use Redis's clock, so nodes whose clocks differ
-- still agree on when a lease ends.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function held(tkey, node, worker)
  return redis.call('HGET', tkey, 'state') == 'assigned'
    and redis.call('HGET', tkey, 'node') == node
    and redis.call('HGET', tkey, 'worker') == worker
end

-- A terminal state: no lease, dedup key free, kept for the retention.
local function finish(tkey, id, state, now, retention)
  redis.call('HSET', tkey, 'state', state, 'updated', now)
  redis.call('ZREM', P .. 'leases', id)
  local dk = redis.call('HGET', tkey, 'dedup')
  if dk and dk ~= '' and redis.call('GET', P .. 'dedup:' .. dk) == id then
    redis.call('DEL', P .. 'dedup:' .. dk)
  end
  redis.call('PEXPIRE', tkey, retention)
end

-- A staged task goes to its queue (1), unless it is not staged (0).
local function unstage(id)
  if redis.call('ZREM', P .. 'staged', id) == 0 then return 0 end
  local tkey = P .. 'task:' .. id
  if redis.call('HGET', tkey, 'state') ~= 'queued' then return 0 end
  local kind = redis.call('HGET', tkey, 'type')
  redis.call('ZADD', P .. 'q:' .. kind, redis.call('HGET', tkey, 'score'), id)
  redis.call('SADD', P .. 'types', kind)
  return 1
end

local function requeue(tkey, id, now)
  local kind = redis.call('HGET', tkey, 'type')
  redis.call('HSET', tkey, 'state', 'queued', 'updated', now, 'node', '', 'worker', '')
  redis.call('ZADD', P .. 'q:' .. kind, redis.call('HGET', tkey, 'score'), id)
  redis.call('SADD', P .. 'types', kind)
  redis.call('INCR', P .. 'waiting')
end

-- The holder lost an assigned task: queued again, or dead when its
-- attempts are used up.
local function release(tkey, id, why, now, retention)
  redis.call('ZREM', P .. 'leases', id)
  redis.call('HSET', tkey, 'error', cjson.encode(why))
  local attempt = tonumber(redis.call('HGET', tkey, 'attempt'))
  if attempt >= tonumber(redis.call('HGET', tkey, 'max')) then
    finish(tkey, id, 'dead', now, retention)
  else
    requeue(tkey, id, now)
  end
end
