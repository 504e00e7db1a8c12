-- heartbeat(P, worker, seconds, lease ids...): extends the worker's leases; replies with the ids
-- it no longer holds (expired and reclaimed, settled, or their job stopped).
local worker, seconds = ARGV[2], tonumber(ARGV[3])
local now = clock()
note_activity(now)
redis.call('ZADD', P .. 'seen', 'XX', D(now), worker)
local deadline = D(now + seconds)
local lost = {}
for i = 4, #ARGV do
  local lid = ARGV[i]
  if redis.call('HGET', P .. 'lease:' .. lid, 'w') == worker then
    redis.call('ZADD', P .. 'leases', 'XX', deadline, lid)
  else
    lost[#lost + 1] = lid
  end
end
return lost
