-- leave(P, host, expire, worker ids...): forgets workers. expire = 1 (a dead worker of this
-- machine): its leases expire now, so the next lease call reclaims them.
local host, expire = ARGV[2], ARGV[3] == '1'
for i = 4, #ARGV do
  local worker = ARGV[i]
  if expire then
    for _, lid in ipairs(redis.call('SMEMBERS', K('wl', worker))) do
      redis.call('ZADD', P .. 'leases', 'XX', '0', lid)
    end
  end
  redis.call('HDEL', P .. 'workers', worker)
  redis.call('ZREM', P .. 'seen', worker)
  if host ~= '' then redis.call('HDEL', P .. 'host:' .. host, worker) end
end
return 1
