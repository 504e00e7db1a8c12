-- add_slices(P, id, number, datum, number, datum ...): stream input; a number already added is
-- ignored. Replies how many were new, or -1 (no such job), -2 (described input), -3 (input closed).
local id = ARGV[2]
local h = redis.call('HMGET', K('job', id), 'status', 'total', 'described')
if not h[1] then return -1 end
if h[3] == '1' then return -2 end
if h[2] ~= '' then return -3 end
if FINAL[h[1]] then return 0 end
local sd, sq = K('sd', id), K('sq', id)
local added = 0
for i = 3, #ARGV, 2 * CHUNK do
  local last = math.min(i + 2 * CHUNK - 1, #ARGV)
  local f = {}
  for k = i, last, 2 do f[#f + 1] = ARGV[k] end
  local have = redis.call('HMGET', sd, unpack(f))
  local set, z, dup = {}, {}, {}
  for k = 1, #f do
    local n = f[k]
    if not have[k] and not dup[n] then
      dup[n] = true
      set[#set + 1] = n; set[#set + 1] = ARGV[i + 2 * (k - 1) + 1]
      z[#z + 1] = n; z[#z + 1] = n
    end
  end
  if #set > 0 then
    redis.call('HSET', sd, unpack(set))
    redis.call('ZADD', sq, unpack(z))
    added = added + #z / 2
  end
end
if added > 0 then enqueue(id) end
return added
