-- report(P, then per report: lease, job, numbers, kinds, columns (msgpack), unusable reason)
-- numbers: msgpack of a list, or '=first:count' for a contiguous run; kinds has one letter per
-- slice: o = ok, f = final error, r = retryable error, b = EBADWORK.
-- A slice counts only while its lease holds it unsettled; it is settled here, in the same atomic
-- step that stores it, so every outcome is recorded exactly once whoever reports it how often.
-- Stored: the worker's columns as sent, behind a header {1, kept positions or false, attempts
-- (1 = all first attempts), worker}. Retryable errors put the slice back until max_attempts.
local touched, seen = {}, {}
for i = 2, #ARGV, 6 do
  local lid, id, kinds, blob, reason = ARGV[i], ARGV[i + 1], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local j = redis.call('HMGET', K('job', id), 'status', 'maxatt')
  local h = read_lease(lid)
  if j[1] and LIVE[j[1]] and h[1] == id then
    local bits, got = settle(h, ARGV[i + 2])
    local counted = false
    if got == true and h[3] and not string.find(kinds, '[^o]') then
      -- The usual report: a contiguous part of a run, all successes, all first attempts.
      settled(lid, h, bits, #kinds)
      record(id, cmsgpack.pack({1, false, 1, h[2]}), blob, #kinds, 0)
      counted = true
    else
      if got == true then got = spelled(h, ARGV[i + 2]) end
      local nums, pos, fresh = got[1], got[2], got[3]
      if #fresh > 0 then
        counted = true
        local maxatt = tonumber(j[2])
        local atts = nil
        if not h[3] then atts = cmsgpack.unpack(h[6]) end
        local keep, kept_atts, rn, ra = {}, {}, {}, {}
        local failed, first_tries, unusable = 0, true, false
        for _, r in ipairs(fresh) do
          local kind = string.sub(kinds, r, r)
          local a = atts and atts[pos[r]] or 1
          if kind == 'r' and a < maxatt then
            rn[#rn + 1] = nums[r]; ra[#ra + 1] = a
          else
            keep[#keep + 1] = r - 1
            kept_atts[#kept_atts + 1] = a
            if a ~= 1 then first_tries = false end
            if kind ~= 'o' then failed = failed + 1 end
            if kind == 'b' then unusable = true end
          end
        end
        settled(lid, h, bits, #fresh)
        if #keep > 0 then
          local mask = (#keep == #nums) and false or keep
          record(id, cmsgpack.pack({1, mask, first_tries and 1 or kept_atts, h[2]}), blob, #keep, failed)
          if atts then
            local f = {}
            for _, r in ipairs(keep) do f[#f + 1] = I(nums[r + 1]) end
            for c = 1, #f, CHUNK do redis.call('HDEL', K('att', id), unpack(f, c, math.min(c + CHUNK - 1, #f))) end
          end
        end
        if #rn > 0 then requeue(id, rn, ra) end
        if unusable then
          cancel(id, reason, 'EBADWORK')
          counted = false
        end
      end
    end
    if counted and not seen[id] then
      seen[id] = true
      touched[#touched + 1] = id
    end
  end
end
for _, id in ipairs(touched) do
  if LIVE[redis.call('HGET', K('job', id), 'status') or ''] then progress(id) end
end
return #touched
