-- close_input(P, id, total): replies -1 (no such job), or the job's total (a different one than
-- asked means it was already closed with that one: nothing changed).
local id, total = ARGV[2], ARGV[3]
local jk = K('job', id)
local h = redis.call('HMGET', jk, 'status', 'total')
if not h[1] then return -1 end
if h[2] ~= '' and h[2] ~= total then return tonumber(h[2]) end
redis.call('HSET', jk, 'total', total)
redis.call('ZREM', P .. 'feeds', id) -- fed in full: nothing to expire
maybe_finish(id)
return tonumber(total)
