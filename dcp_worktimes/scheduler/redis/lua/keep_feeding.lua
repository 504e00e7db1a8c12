-- keep_feeding(P, id, seconds): the deployer of stream job id is alive and still sending its
-- input: its feed deadline (server clock) moves to now + seconds. Replies -1 (no such job), 0
-- (nothing to feed: a described input, or closed, or the job ended), 1 (kept).
local id, seconds = ARGV[2], tonumber(ARGV[3])
local h = redis.call('HMGET', K('job', id), 'status', 'total', 'described')
if not h[1] then return -1 end
if h[3] == '1' or h[2] ~= '' or FINAL[h[1]] then return 0 end -- a deadline now would outlive the job
redis.call('ZADD', P .. 'feeds', D(clock() + seconds), id)
return 1
