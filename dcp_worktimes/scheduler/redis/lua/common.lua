-- Shared by every script (scripts.py prepends it): key names, exact numbers, the event log,
-- recording result batches, re-queueing slices, finishing and cancelling a job, expiring leases.
-- ARGV[1] is always the group's key prefix ("dcp:<group>:"); keys.py describes every key.
local P = ARGV[1]
local FINAL = {complete = true, cancelled = true, failed = true}
local LIVE = {running = true, unschedulable = true}
local CHUNK = 1000 -- Lua's unpack() takes at most ~8000 values: commands with many arguments go in chunks

local function K(kind, id) return P .. kind .. ':' .. id end
-- Integers as exact decimal text (tostring would print 1e+15).
local function I(n) return string.format('%d', n) end
local function D(x) return string.format('%.17g', x) end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- HMGET / HSET of many slice-number fields, in chunks (values in order; false when absent).
local function hmget_numbers(key, nums)
  local out = {}
  for i = 1, #nums, CHUNK do
    local f = {}
    for j = i, math.min(i + CHUNK - 1, #nums) do f[#f + 1] = I(nums[j]) end
    local got = redis.call('HMGET', key, unpack(f))
    for j = 1, #got do out[#out + 1] = got[j] end
  end
  return out
end

local function hset_numbers(key, nums, values)
  for i = 1, #nums, CHUNK do
    local a = {}
    for j = i, math.min(i + CHUNK - 1, #nums) do a[#a + 1] = I(nums[j]); a[#a + 1] = values[j] end
    redis.call('HSET', key, unpack(a))
  end
end

-- One event; fields is a flat list of names and values (reads.py turns them back into a dict).
local function event(id, fields)
  local seq = redis.call('HINCRBY', K('job', id), 'seq', 1)
  redis.call('XADD', K('ev', id), '0-' .. I(seq), unpack(fields))
  return seq
end

local function status_event(id, h) -- h: total, distributed, computed, failed
  event(id, {'k', 'status', 't', h[1], 'd', h[2], 'c', h[3], 'f', h[4]})
end

-- A batch of final outcomes: one list element, one stream entry owning `count` sequence numbers.
local function record(id, head, blob, count, failed)
  local jk = K('job', id)
  local index = redis.call('RPUSH', K('res', id), head .. blob) - 1
  local last = redis.call('HINCRBY', jk, 'seq', count)
  redis.call('XADD', K('ev', id), '0-' .. I(last), 'b', I(index), 'n', I(count))
  if count > failed then redis.call('HINCRBY', jk, 'computed', count - failed) end
  if failed > 0 then redis.call('HINCRBY', jk, 'failed', failed) end
end

-- The job has slices to hand out: into the queue, and idle workers anywhere are woken.
local function enqueue(id)
  local h = redis.call('HMGET', K('job', id), 'qkey', 'payment', 'status')
  if h[1] and LIVE[h[3]] then
    redis.call('ZADD', P .. 'queue', D(-tonumber(h[2])), h[1])
    redis.call('XADD', P .. 'wake', 'MAXLEN', '~', '100', '*', 'j', id)
  end
end

-- Slices back to the queue with the attempts they used so far (retried before fresh slices).
local function requeue(id, nums, atts)
  local pk, ak = K('pend', id), K('att', id)
  for i = 1, #nums, CHUNK do
    local z, a = {}, {}
    for j = i, math.min(i + CHUNK - 1, #nums) do
      local n = I(nums[j])
      z[#z + 1] = n; z[#z + 1] = n
      if atts[j] > 0 then a[#a + 1] = n; a[#a + 1] = I(atts[j]) end
    end
    redis.call('ZADD', pk, unpack(z))
    if #a > 0 then redis.call('HSET', ak, unpack(a)) end
  end
  enqueue(id)
end

-- Slices lost max_attempts times: a batch of ECRASH errors (reads.py writes their message).
local function lost(id, nums, atts, maxatt)
  record(id, cmsgpack.pack({2, nums, atts, maxatt}), '', #nums, #nums)
end

local function drop_lease(lid, id, worker)
  redis.call('DEL', P .. 'lease:' .. lid)
  redis.call('ZREM', P .. 'leases', lid)
  redis.call('SREM', K('jl', id), lid)
  redis.call('SREM', K('wl', worker), lid)
end

-- A job that stopped needs none of its slice bookkeeping: input datums, retries, leases.
local function drop_slices(id)
  local jl = K('jl', id)
  for _, lid in ipairs(redis.call('SMEMBERS', jl)) do
    local worker = redis.call('HGET', P .. 'lease:' .. lid, 'w')
    drop_lease(lid, id, worker or '')
  end
  redis.call('DEL', K('pend', id), K('att', id), K('sq', id), K('sd', id), jl)
  redis.call('ZREM', P .. 'feeds', id)
  local qkey = redis.call('HGET', K('job', id), 'qkey')
  if qkey then redis.call('ZREM', P .. 'queue', qkey) end
end

local function expire_job(id)
  local keep = tonumber(redis.call('HGET', K('job', id), 'keep') or '0') or 0
  if keep > 0 then
    for _, kind in ipairs({'job', 'ev', 'res'}) do redis.call('EXPIRE', K(kind, id), I(keep)) end
  end
end

-- Marks the job complete (or failed) once every slice has a final outcome.
local function maybe_finish(id)
  local jk = K('job', id)
  local h = redis.call('HMGET', jk, 'status', 'total', 'distributed', 'computed', 'failed')
  if (not h[1]) or FINAL[h[1]] or h[2] == '' then return false end
  if tonumber(h[4]) + tonumber(h[5]) < tonumber(h[2]) then return false end
  local final = (tonumber(h[5]) == 0) and 'complete' or 'failed'
  redis.call('HSET', jk, 'status', final)
  drop_slices(id)
  status_event(id, {h[2], h[3], h[4], h[5]})
  event(id, {'k', 'state', 's', final})
  event(id, {'k', 'complete', 'c', h[4], 'f', h[5]})
  expire_job(id)
  return true
end

local function progress(id) -- after outcomes were recorded: the job's counters, or its end
  if not maybe_finish(id) then
    status_event(id, redis.call('HMGET', K('job', id), 'total', 'distributed', 'computed', 'failed'))
  end
end

local function cancel(id, reason, code)
  local jk = K('job', id)
  local status = redis.call('HGET', jk, 'status')
  if (not status) or FINAL[status] then return false end
  redis.call('HSET', jk, 'status', 'cancelled', 'reason', reason)
  drop_slices(id)
  event(id, {'k', 'state', 's', 'cancelled'})
  if code ~= '' then event(id, {'k', 'cancel', 'r', reason, 'c', code}) else event(id, {'k', 'cancel', 'r', reason}) end
  expire_job(id)
  return true
end

-- The string of one byte per slice as a table of numbers (and back), for scattered updates.
local function bytes_of(s)
  local t = {}
  for i = 1, #s, CHUNK do
    local part = {string.byte(s, i, math.min(i + CHUNK - 1, #s))}
    for j = 1, #part do t[i + j - 1] = part[j] end
  end
  return t
end

local function string_of(t)
  local parts = {}
  for i = 1, #t, CHUNK do parts[#parts + 1] = string.char(unpack(t, i, math.min(i + CHUNK - 1, #t))) end
  return table.concat(parts)
end

-- A lease's slice numbers and attempts (h: HMGET j w f s n a c d b).
local function lease_slices(h)
  if h[3] then
    local first, count = tonumber(h[3]), tonumber(h[7])
    local nums, atts = {}, {}
    for i = 1, count do nums[i] = first + i - 1; atts[i] = 1 end
    return nums, atts
  end
  return cmsgpack.unpack(h[5]), cmsgpack.unpack(h[6])
end

local LEASE_FIELDS = {'j', 'w', 'f', 's', 'n', 'a', 'c', 'd', 'b'}

local function read_lease(lid)
  return redis.call('HMGET', P .. 'lease:' .. lid, unpack(LEASE_FIELDS))
end

-- Reported slice numbers: msgpack of a list, or '=first:count' for a contiguous ascending run (the
-- usual report: no list to build or walk).
local function reported(arg)
  if string.sub(arg, 1, 1) == '=' then
    local first, count = string.match(arg, '^=(%d+):(%d+)$')
    return nil, tonumber(first), tonumber(count)
  end
  local nums = cmsgpack.unpack(arg)
  return nums, nil, #nums
end

local function numbers_of_run(first, count)
  local nums = {}
  for i = 1, count do nums[i] = first + i - 1 end
  return nums
end

-- Position in the lease (1-based, 0 = not in it) of each reported slice number.
local function positions(h, nums)
  local pos = {}
  if h[3] then
    local lease_first, count = tonumber(h[3]), tonumber(h[7])
    for r = 1, #nums do
      local p = nums[r] - lease_first + 1
      pos[r] = (p >= 1 and p <= count) and p or 0
    end
  else
    local index = {}
    for i, n in ipairs(cmsgpack.unpack(h[5])) do index[n] = i end
    for r = 1, #nums do pos[r] = index[nums[r]] or 0 end
  end
  return pos
end

-- Settles reported slices in lease h. Returns the settled-bytes string after, and either
-- true (every reported slice was fresh: the usual contiguous part of a run, checked with one
-- substring) or {numbers, positions, fresh report indexes} for the slices that counted.
local function settle(h, arg)
  local bits = h[9]
  local nums, first, k = reported(arg)
  if first and h[3] then
    local lo = first - tonumber(h[3]) + 1
    if lo >= 1 and lo + k - 1 <= #bits and string.sub(bits, lo, lo + k - 1) == string.rep('\0', k) then
      return string.sub(bits, 1, lo - 1) .. string.rep('\1', k) .. string.sub(bits, lo + k), true
    end
  end
  nums = nums or numbers_of_run(first, k)
  local pos = positions(h, nums)
  local t = bytes_of(bits)
  local fresh = {}
  for r = 1, #nums do
    local p = pos[r]
    if p > 0 and t[p] == 0 then t[p] = 1; fresh[#fresh + 1] = r end
  end
  if #fresh > 0 then bits = string_of(t) end
  return bits, {nums, pos, fresh}
end

-- The {numbers, positions, fresh} of a settle() that answered true.
local function spelled(h, arg)
  local nums, first, k = reported(arg)
  nums = nums or numbers_of_run(first, k)
  local fresh = {}
  for r = 1, #nums do fresh[r] = r end
  return {nums, positions(h, nums), fresh}
end

-- Writes back a lease's settled bytes and count; a lease whose slices are all settled is dropped.
local function settled(lid, h, bits, k)
  local done = tonumber(h[8]) + k
  if done >= tonumber(h[7]) then
    drop_lease(lid, h[1], h[2])
  else
    redis.call('HSET', P .. 'lease:' .. lid, 'b', bits, 'd', I(done))
  end
end

-- Stream jobs whose deployer stopped renewing their feed deadline (keep_feeding) with the input
-- still open are cancelled: the inputs it had not sent existed only in its process. A job never
-- given a deadline (its deployer predates them) never expires this way. The reason is the
-- sentence of base.feed_lost_reason (the conformance suite checks that both say the same).
local function end_lost_feeds(now, limit)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'feeds', '-inf', D(now), 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', P .. 'feeds', id)
    local h = redis.call('HMGET', K('job', id), 'status', 'total')
    if h[1] and not FINAL[h[1]] and h[2] == '' then
      local arrived = redis.call('HLEN', K('sd', id)) -- a stream's datums stay until it ends: one per input
      cancel(id, 'the deployer stopped while sending its input stream (' .. I(arrived) .. ' inputs had arrived); '
        .. 'the rest existed only in that process: deploy the job again', '')
    end
  end
end

-- Live workers call lease or heartbeat every few seconds (a heartbeat every third of a lease).
-- A gap longer than QUIET_GAP between two such calls means none could: the server was down or
-- unreachable. A lease that expired in such a gap was not lost by its worker: it is spared for
-- SPARE_GRACE seconds after the gap, for its worker (back too) to extend it. Reclaimed at once,
-- each outage longer than a lease cost every running slice an attempt, and three such outages
-- failed them (ECRASH, "its worker died") while their workers ran them to the end. The price:
-- a group whose only worker died, or whose workers heartbeat less often than QUIET_GAP (leases
-- of over 60 s), sees its expired leases handed out SPARE_GRACE seconds later.
local QUIET_GAP, SPARE_GRACE = 20, 60
local function note_activity(now)
  local last = tonumber(redis.call('GET', P .. 'clock') or '')
  redis.call('SET', P .. 'clock', D(now))
  if last and now - last > QUIET_GAP then
    redis.call('SET', P .. 'quiet', D(last) .. ' ' .. D(now))
  end
end

-- The deadlines of expired leases to reclaim now: ranges of the 'leases' zset (the gap's spared).
local function expired_ranges(now)
  local q = redis.call('GET', P .. 'quiet')
  if q then
    local from, to = string.match(q, '^(%S+) (%S+)$')
    from, to = tonumber(from), tonumber(to)
    if from and to and now < to + SPARE_GRACE then
      return {{'-inf', '(' .. D(from)}, {'(' .. D(to), D(now)}}
    end
    redis.call('DEL', P .. 'quiet')
  end
  return {{'-inf', D(now)}}
end

-- Expired leases: their unsettled slices go back to the queue with one more attempt used (but
-- those their worker said it had not started: see heartbeat.lua), or fail with ECRASH once they
-- were lost max_attempts times. Lost feeds first: a job they cancel
-- has no leases left to requeue.
local function reclaim(now, limit)
  end_lost_feeds(now, limit)
  local lids = {}
  for _, range in ipairs(expired_ranges(now)) do
    for _, lid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', range[1], range[2], 'LIMIT', 0, limit - #lids)) do
      lids[#lids + 1] = lid
    end
    if #lids >= limit then break end
  end
  local touched = {}
  for _, lid in ipairs(lids) do
    local h = read_lease(lid)
    if not h[1] then
      redis.call('ZREM', P .. 'leases', lid)
    else
      local unstarted = redis.call('HGET', P .. 'lease:' .. lid, 'u')
      drop_lease(lid, h[1], h[2])
      local j = redis.call('HMGET', K('job', h[1]), 'status', 'maxatt')
      if j[1] and LIVE[j[1]] then
        local nums, atts = lease_slices(h)
        local bits, maxatt = h[9], tonumber(j[2])
        local lost_n, lost_a = {}, {}
        for i = 1, #nums do
          if string.byte(bits, i) == 0 then lost_n[#lost_n + 1] = nums[i]; lost_a[#lost_a + 1] = atts[i] end
        end
        -- Slices its worker had not started at its last heartbeat come back as they were, once in
        -- a row (field 'r<n>' of att marks them): work that kills its worker just after it
        -- starts, before a heartbeat says so, is charged the next time.
        local never = {}
        if unstarted then
          local ok, list = pcall(cmsgpack.unpack, unstarted)
          if ok and type(list) == 'table' then for _, n in ipairs(list) do never[n] = true end end
        end
        local ak = K('att', h[1])
        local marks = {}
        if next(never) ~= nil and #lost_n > 0 then
          local fields = {}
          for i = 1, #lost_n do fields[i] = 'r' .. I(lost_n[i]) end
          for c = 1, #fields, CHUNK do
            local got = redis.call('HMGET', ak, unpack(fields, c, math.min(c + CHUNK - 1, #fields)))
            for x = 1, #got do marks[c + x - 1] = got[x] end
          end
        end
        local fn, fa, fz, rn, ra, ln, la, charged = {}, {}, {}, {}, {}, {}, {}, {}
        for i = 1, #lost_n do
          local n, a = lost_n[i], lost_a[i]
          if never[n] and not marks[i] then
            fn[#fn + 1] = n; fa[#fa + 1] = a - 1
            if a - 1 == 0 then fz[#fz + 1] = I(n) end
          else
            if marks[i] then charged[#charged + 1] = 'r' .. I(n) end
            if a < maxatt then rn[#rn + 1] = n; ra[#ra + 1] = a
            else ln[#ln + 1] = n; la[#la + 1] = a end
          end
        end
        if #fn > 0 then
          requeue(h[1], fn, fa)
          -- attempts back to what they were before this lease, and the mark
          for c = 1, #fz, CHUNK do redis.call('HDEL', ak, unpack(fz, c, math.min(c + CHUNK - 1, #fz))) end
          for c = 1, #fn, CHUNK do
            local m = {}
            for x = c, math.min(c + CHUNK - 1, #fn) do m[#m + 1] = 'r' .. I(fn[x]); m[#m + 1] = '1' end
            redis.call('HSET', ak, unpack(m))
          end
        end
        for c = 1, #charged, CHUNK do redis.call('HDEL', ak, unpack(charged, c, math.min(c + CHUNK - 1, #charged))) end
        if #rn > 0 then requeue(h[1], rn, ra) end
        if #ln > 0 then lost(h[1], ln, la, maxatt) end
        if #fn + #rn + #ln > 0 then touched[#touched + 1] = h[1] end
      end
    end
  end
  for _, id in ipairs(touched) do maybe_finish(id) end
  return #lids
end
