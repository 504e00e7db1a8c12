-- post_events(P, id, token, packed events...): appends worker events once per token; none to a
-- cancelled or deleted job.
local id, token = ARGV[2], ARGV[3]
if redis.call('SET', P .. 'req:' .. token, '1', 'NX', 'EX', 300) == false then return 0 end
local status = redis.call('HGET', K('job', id), 'status')
if (not status) or status == 'cancelled' then return 0 end
for i = 4, #ARGV do event(id, {'e', ARGV[i]}) end
return #ARGV - 3
