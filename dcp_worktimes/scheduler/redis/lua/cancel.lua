-- cancel(P, id, reason): -1 no such job, 0 already final, 1 cancelled.
local id = ARGV[2]
if redis.call('EXISTS', K('job', id)) == 0 then return -1 end
return cancel(id, ARGV[3], '') and 1 or 0
