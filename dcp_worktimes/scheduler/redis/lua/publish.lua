-- publish(P, name, version, owner, record): stores a new application version. Replies 1, or
-- -1 (the name belongs to another owner), -2 (that version exists: it never changes).
local name, version, owner = ARGV[2], ARGV[3], ARGV[4]
local first = redis.call('HGET', P .. 'apps', name)
if first and first ~= owner then return -1 end
if redis.call('HEXISTS', K('app', name), version) == 1 then return -2 end
redis.call('HSETNX', P .. 'apps', name, owner)
redis.call('HSET', K('app', name), version, ARGV[5])
return 1
