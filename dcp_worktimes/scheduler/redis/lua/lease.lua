-- lease(P, worker, info, host, pid, seconds, want, token, job ids in the order to try...)
-- Registers the worker, reclaims expired leases, then cuts blocks from the given jobs (the client
-- chose the ones this worker can run, best paying first): retried slices first, then a run of
-- fresh ones. Replies with cmsgpack of {leases reclaimed now, blocks} (a job whose slices were just
-- reclaimed was not among the client's candidates: it asks again), blocks being:
--   {1, job, lease, first, stop, datums or false}   a run of slices first .. stop-1 (attempt 1)
--   {2, job, lease, numbers, attempts, datums or false}
-- datums (packed) for stream jobs; described jobs' datums are computed by the client.
local worker, info, host, pid = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local seconds, want, token = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local rk = P .. 'req:' .. token

local function datums(id, nums)
  local out = hmget_numbers(K('sd', id), nums)
  for i = 1, #out do out[i] = out[i] or '' end
  return out
end

-- The reply entry of an existing lease (also rebuilds the reply of a retried call).
local function describe(lid)
  local h = read_lease(lid)
  if not h[1] then return nil end
  local stream = redis.call('HGET', K('job', h[1]), 'described') ~= '1'
  if h[3] then
    local first, stop = tonumber(h[3]), tonumber(h[4])
    local d = false
    if stream then
      local nums = {}
      for n = first, stop - 1 do nums[#nums + 1] = n end
      d = datums(h[1], nums)
    end
    return {1, h[1], lid, first, stop, d}
  end
  local nums = cmsgpack.unpack(h[5])
  return {2, h[1], lid, nums, cmsgpack.unpack(h[6]), stream and datums(h[1], nums) or false}
end

local done = redis.call('GET', rk)
if done then
  local out = {}
  for _, lid in ipairs(cmsgpack.unpack(done)) do
    local block = describe(lid)
    if block then out[#out + 1] = block end
  end
  return cmsgpack.pack({0, out})
end

local now = clock()
note_activity(now)
redis.call('HSET', P .. 'workers', worker, info)
redis.call('ZADD', P .. 'seen', D(now), worker)
if host ~= '' then redis.call('HSET', P .. 'host:' .. host, worker, pid) end
-- A bounded number per call: a script blocks the server while it runs (the rest go on the next calls).
local reclaimed = reclaim(now, 32)

local deadline = D(now + seconds)
local lids = {}

local function new_lease(id, fields)
  local lid = token .. '.' .. I(#lids + 1)
  redis.call('HSET', P .. 'lease:' .. lid, 'j', id, 'w', worker, unpack(fields))
  redis.call('ZADD', P .. 'leases', deadline, lid)
  redis.call('SADD', K('jl', id), lid)
  redis.call('SADD', K('wl', worker), lid)
  lids[#lids + 1] = lid
end

local function run_lease(id, first, stop)
  local count = stop - first
  new_lease(id, {'f', I(first), 's', I(stop), 'c', I(count), 'd', '0', 'b', string.rep('\0', count)})
end

local function list_lease(id, nums, atts)
  new_lease(id, {'n', cmsgpack.pack(nums), 'a', cmsgpack.pack(atts), 'c', I(#nums), 'd', '0',
                 'b', string.rep('\0', #nums)})
end

local function numbers_of(popped) -- ZPOPMIN's member, score, member, score ...
  local nums = {}
  for i = 1, #popped, 2 do nums[#nums + 1] = tonumber(popped[i]) end
  return nums
end

local function lease_job(id, want)
  local jk = K('job', id)
  local h = redis.call('HMGET', jk, 'status', 'total', 'described', 'next', 'qkey')
  if not (h[1] and LIVE[h[1]]) then return 0 end
  local got, first_time = 0, 0
  local pend = redis.call('ZPOPMIN', K('pend', id), want)
  if #pend > 0 then
    local nums = numbers_of(pend)
    local atts = {}
    local ak = K('att', id)
    for i, prev in ipairs(hmget_numbers(ak, nums)) do atts[i] = (tonumber(prev) or 0) + 1 end
    hset_numbers(ak, nums, atts)
    list_lease(id, nums, atts)
    got = #nums
  end
  local described = h[3] == '1'
  local more = true
  if want - got > 0 then
    if described then
      local total, nxt = tonumber(h[2]), tonumber(h[4])
      if nxt < total then
        local stop = math.min(total, nxt + want - got)
        redis.call('HSET', jk, 'next', I(stop))
        run_lease(id, nxt, stop)
        got = got + stop - nxt
        first_time = stop - nxt
        more = stop < total
      else
        more = false
      end
    else
      local nums = numbers_of(redis.call('ZPOPMIN', K('sq', id), want - got))
      if #nums > 0 then
        if nums[#nums] - nums[1] + 1 == #nums then
          run_lease(id, nums[1], nums[#nums] + 1)
        else
          local atts = {}
          for i = 1, #nums do atts[i] = 1 end
          list_lease(id, nums, atts)
        end
        got = got + #nums
        first_time = #nums
      end
      more = redis.call('ZCARD', K('sq', id)) > 0
    end
  end
  if first_time > 0 then redis.call('HINCRBY', jk, 'distributed', first_time) end
  if not more and redis.call('ZCARD', K('pend', id)) == 0 then
    redis.call('ZREM', P .. 'queue', h[5]) -- nothing to hand out: back in the queue when slices are
  end
  if got > 0 and h[1] == 'unschedulable' then
    redis.call('HSET', jk, 'status', 'running')
    redis.call('HDEL', jk, 'reason')
    event(id, {'k', 'state', 's', 'running'})
  end
  return got
end

for i = 9, #ARGV do
  if want <= 0 then break end
  want = want - lease_job(ARGV[i], want)
end

if #lids > 0 then redis.call('SET', rk, cmsgpack.pack(lids), 'EX', 300) end -- a retry of an empty call may lease anew
local out = {}
for _, lid in ipairs(lids) do out[#out + 1] = describe(lid) end
return cmsgpack.pack({reclaimed, out})
