-- set_payment(P, id, payment): the new bid orders leasing from now on. -1: no such job.
local id, payment = ARGV[2], ARGV[3]
local jk = K('job', id)
local qkey = redis.call('HGET', jk, 'qkey')
if not qkey then return -1 end
redis.call('HSET', jk, 'payment', payment)
redis.call('ZADD', P .. 'queue', 'XX', D(-tonumber(payment)), qkey)
return 1
