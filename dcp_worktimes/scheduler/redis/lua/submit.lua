-- submit(P, id, record, payment, created, total or '', described, qkey, max attempts, keep, token,
--        match, input, events...): match and input are the small parts of the record that matching
-- and slicing read (a worker never downloads a job's work and files unless it runs it).
-- Replies 1 (stored), 0 (this very call was already stored: a retry), -1 (the id is taken).
local id, token = ARGV[2], ARGV[11]
local jk = K('job', id)
if redis.call('EXISTS', jk) == 1 then
  if redis.call('HGET', jk, 'token') == token then return 0 end
  return -1
end
redis.call('HSET', jk, 'record', ARGV[3], 'status', 'running', 'payment', ARGV[4], 'created', ARGV[5],
           'total', ARGV[6], 'described', ARGV[7], 'next', '0', 'distributed', '0', 'computed', '0', 'failed', '0',
           'seq', '0', 'qkey', ARGV[8], 'maxatt', ARGV[9], 'keep', ARGV[10], 'token', token, 'match', ARGV[12],
           'input', ARGV[13])
redis.call('ZADD', P .. 'jobs', ARGV[5], id)
for i = 14, #ARGV do event(id, {'e', ARGV[i]}) end
if ARGV[6] == '0' then
  maybe_finish(id)
elseif ARGV[7] == '1' then
  enqueue(id)
end
return 1
