-- Headless Neovim 0.12 end-to-end: the real `foresight serve` shows ghost text through
-- vim.lsp.inline_completion, and accepting it puts the suggestion into the buffer.
-- usage: FORESIGHT_BIN=... FORESIGHT_MODEL=... FORESIGHT_SAMPLE=file.py [FORESIGHT_INIT_OPTIONS=json]
--          nvim --headless -u NONE -i NONE -S nvim_ghost.lua
-- Prints "ok: ..." lines and "PASS" on success; exits with code 1 (cquit) on any failure.
local out = function(s) io.stdout:write(s .. "\n") end
local function fail(msg)
  out("FAIL: " .. msg)
  vim.cmd("cquit 1")
end
local function check(ok, msg)
  if not ok then fail(msg) end
  out("ok: " .. msg)
end
vim.o.showmode = false

local bin, model, sample = os.getenv("FORESIGHT_BIN"), os.getenv("FORESIGHT_MODEL"), os.getenv("FORESIGHT_SAMPLE")
vim.cmd("edit " .. vim.fn.fnameescape(sample))
local buf = vim.api.nvim_get_current_buf()
local cmd = { bin, "serve", "--model", model }
if os.getenv("FORESIGHT_SERVER_LOG") then
  cmd = { bin, "--log-file", os.getenv("FORESIGHT_SERVER_LOG"), "serve", "--model", model }
end
local client_id = vim.lsp.start({
  name = "foresight",
  cmd = cmd,
  root_dir = vim.fs.dirname(sample),
  -- FORESIGHT_INIT_OPTIONS (a JSON object) adds to these, e.g. a remote engine's engineUrl.
  init_options = vim.tbl_extend("force", { lines = "single", maxTokens = 4, resultCache = false },
    vim.json.decode(os.getenv("FORESIGHT_INIT_OPTIONS") or "{}")),
}, { bufnr = buf })
check(client_id ~= nil, "vim.lsp.start started foresight")
vim.lsp.inline_completion.enable(true)

-- Polls `pred` on the main loop every 50 ms, then calls `k(value)`; fails after `ms`.
local function poll(ms, what, pred, k)
  local deadline = vim.uv.now() + ms
  local function step()
    local v = pred()
    if v then return k(v) end
    if vim.uv.now() > deadline then return fail("timed out waiting for " .. what) end
    vim.defer_fn(step, 50)
  end
  step()
end

local function ghost_text()
  local ns = vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
  for _, m in ipairs(vim.api.nvim_buf_get_extmarks(buf, ns or -1, 0, -1, { details = true })) do
    local d = m[4]
    if d.virt_text and d.virt_text[1] then
      local s = {}
      for _, chunk in ipairs(d.virt_text) do s[#s + 1] = chunk[1] end
      return table.concat(s)
    end
  end
end

local row = vim.api.nvim_buf_line_count(buf) - (vim.api.nvim_buf_get_lines(buf, -2, -1, false)[1] == "" and 1 or 0)
local line = vim.api.nvim_buf_get_lines(buf, row - 1, row, false)[1]

poll(60000, "the model to load", function()
  local c = vim.lsp.get_client_by_id(client_id)
  if not c or not c.initialized then return nil end
  local r = c:request_sync("foresight/stats", vim.NIL, 5000, buf)
  return r and r.result and r.result.model ~= vim.NIL and c
end, function(client)
  check(client.server_capabilities.inlineCompletionProvider ~= nil, "server advertises inlineCompletionProvider")
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.position = { line = row - 1, character = #line }
  params.context = { triggerKind = 1 }
  local r = client:request_sync("textDocument/inlineCompletion", params, 30000, buf)
  local items = r and r.result and r.result.items
  check(items and items[1] and items[1].insertText ~= "", "the server suggests something at the end of line " .. row .. ": " .. vim.inspect(r) .. " " .. vim.inspect(params))
  local want = items[1].insertText
  out("suggestion: " .. vim.inspect(want))

  vim.api.nvim_win_set_cursor(0, { row, 0 })
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("A", true, false, true), "n", false)
  poll(60000, "ghost text", function()
    return vim.api.nvim_get_mode().mode == "i" and ghost_text()
  end, function(ghost)
    check(ghost == want, "ghost text shows the suggestion: " .. vim.inspect(ghost))
    check(vim.api.nvim_buf_get_lines(buf, row - 1, row, false)[1] == line, "the buffer is unchanged while ghost text shows")
    check(vim.lsp.inline_completion.get() == true, "vim.lsp.inline_completion.get() accepts it")
    poll(10000, "the accepted text", function()
      local l = vim.api.nvim_buf_get_lines(buf, row - 1, row, false)[1]
      return l ~= line and l
    end, function(now)
      check(now == line .. want, "the line now ends with the suggestion: " .. vim.inspect(now))
      out("PASS")
      vim.cmd("qall!")
    end)
  end)
end)
