-- wrk: each request carries one of 1,000 API keys, in turn.
local n = 0
request = function()
  n = (n + 1) % 1000
  return wrk.format("GET", "/", { ["x-api-key"] = "key-" .. n })
end
