-- close_input(P, id, total): replies -1 (no such job), or the job's total (a different one than
-- asked means it was already closed with that one: nothing changed). A stream's datums stay in
-- sd:<id> while it runs, one per input: fewer than total means the server lost some (it restarted
-- from an older snapshot, or they were deleted), which existed only in the deploying process: the
-- job is cancelled saying so, instead of waiting for ever for slices nobody will lease.
local id, total = ARGV[2], ARGV[3]
local jk = K('job', id)
local h = redis.call('HMGET', jk, 'status', 'total')
if not h[1] then return -1 end
if h[2] ~= '' and h[2] ~= total then return tonumber(h[2]) end
redis.call('HSET', jk, 'total', total)
redis.call('ZREM', P .. 'feeds', id) -- fed in full: nothing to expire
if not FINAL[h[1]] then
  local have = redis.call('HLEN', K('sd', id))
  if have < tonumber(total) then
    cancel(id, 'the job store lost ' .. I(tonumber(total) - have) .. ' of the job\'s ' .. total .. ' inputs (the Redis '
      .. 'server restarted from an older snapshot, or they were deleted); they existed only in the deploying process: '
      .. 'deploy the job again', '')
    return tonumber(total)
  end
end
maybe_finish(id)
return tonumber(total)
