-- workers(P, ttl): workers seen within ttl seconds (server clock), as cmsgpack {ids, infos, times};
-- workers not seen for an hour are forgotten.
local ttl = tonumber(ARGV[2])
local now = clock()
local stale = redis.call('ZRANGEBYSCORE', P .. 'seen', '-inf', D(now - 3600))
for i = 1, #stale, CHUNK do
  local part = {unpack(stale, i, math.min(i + CHUNK - 1, #stale))}
  redis.call('HDEL', P .. 'workers', unpack(part))
  redis.call('ZREM', P .. 'seen', unpack(part))
end
local seen = redis.call('ZRANGEBYSCORE', P .. 'seen', D(now - ttl), '+inf', 'WITHSCORES')
local ids, times = {}, {}
for i = 1, #seen, 2 do ids[#ids + 1] = seen[i]; times[#times + 1] = tonumber(seen[i + 1]) end
local infos = {}
for i = 1, #ids, CHUNK do
  local got = redis.call('HMGET', P .. 'workers', unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
  for k = 1, #got do infos[#infos + 1] = got[k] or '' end
end
return cmsgpack.pack({ids, infos, times})
