-- delete(P, id, token): forgets the job and everything stored for it (cancelled first if running).
-- -1: no such job (unless this very call deleted it already: a retry).
local id, token = ARGV[2], ARGV[3]
local rk = P .. 'req:' .. token
if redis.call('EXISTS', K('job', id)) == 0 then
  if redis.call('EXISTS', rk) == 1 then return 1 end
  return -1
end
cancel(id, 'deleted', '')
drop_slices(id)
redis.call('DEL', K('job', id), K('ev', id), K('res', id))
redis.call('ZREM', P .. 'jobs', id)
redis.call('SET', rk, '1', 'EX', 300)
return 1
