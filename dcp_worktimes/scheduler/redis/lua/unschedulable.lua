-- unschedulable(P, id, reason): records the verdict once (a deployer asks every quiet period).
-- -1 no such job, 0 final (nothing recorded), 1 the same verdict already, 2 recorded now.
local id, reason = ARGV[2], ARGV[3]
local jk = K('job', id)
local h = redis.call('HMGET', jk, 'status', 'reason')
if not h[1] then return -1 end
if FINAL[h[1]] then return 0 end
if h[1] == 'unschedulable' and h[2] == reason then return 1 end
redis.call('HSET', jk, 'status', 'unschedulable', 'reason', reason)
event(id, {'k', 'unschedulable', 'r', reason})
return 2
