-- heartbeat(P, worker, seconds, lease ids..., then per lease id: the msgpack list of its slices
-- not started yet, or '' for none): extends the worker's leases and notes their unstarted slices
-- (field 'u': reclaim returns them without using an attempt); replies with the ids it no longer
-- holds (expired and reclaimed, settled, or their job stopped).
local worker, seconds = ARGV[2], tonumber(ARGV[3])
local now = clock()
note_activity(now)
redis.call('ZADD', P .. 'seen', 'XX', D(now), worker)
local deadline = D(now + seconds)
local k = (#ARGV - 3) / 2
local lost = {}
for i = 4, 3 + k do
  local lid, unstarted = ARGV[i], ARGV[i + k]
  local lk = P .. 'lease:' .. lid
  if redis.call('HGET', lk, 'w') == worker then
    redis.call('ZADD', P .. 'leases', 'XX', deadline, lid)
    if unstarted ~= '' then redis.call('HSET', lk, 'u', unstarted) else redis.call('HDEL', lk, 'u') end
  else
    lost[#lost + 1] = lid
  end
end
return lost
