-- give_back(P, then per lease: lease, job, numbers (as report.lua takes them))
-- Slices handed back unrun (a worker stopping, or unable to run them): back to the queue without
-- using an attempt, if the lease still holds them.
for i = 2, #ARGV, 3 do
  local lid, id = ARGV[i], ARGV[i + 1]
  local status = redis.call('HGET', K('job', id), 'status')
  local h = read_lease(lid)
  if status and LIVE[status] and h[1] == id then
    local bits, got = settle(h, ARGV[i + 2])
    if got == true then got = spelled(h, ARGV[i + 2]) end
    local nums, pos, fresh = got[1], got[2], got[3]
    if #fresh > 0 then
      local atts = nil
      if not h[3] then atts = cmsgpack.unpack(h[6]) end
      local back, used = {}, {}
      for _, r in ipairs(fresh) do
        back[#back + 1] = nums[r]
        used[#used + 1] = (atts and atts[pos[r]] or 1) - 1
      end
      settled(lid, h, bits, #fresh)
      requeue(id, back, used)
      if atts then -- attempts back to what they were before this lease
        local f = {}
        for k = 1, #back do if used[k] == 0 then f[#f + 1] = I(back[k]) end end
        for c = 1, #f, CHUNK do redis.call('HDEL', K('att', id), unpack(f, c, math.min(c + CHUNK - 1, #f))) end
      end
    end
  end
end
return 1
