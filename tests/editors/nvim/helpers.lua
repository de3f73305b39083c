-- Shared by the Neovim e2e scripts: a coroutine runner whose waits hand control back to Neovim's
-- main loop (so that fed keys, LSP replies and timers are processed), and pass/fail bookkeeping.
-- Environment: FORESIGHT_BIN, FORESIGHT_MODEL, FORESIGHT_SAMPLE (the file to edit),
-- FORESIGHT_REPO (the checkout, for editors/nvim), FORESIGHT_CONFIG (server settings as JSON).
local H = { failures = 0, passes = 0 }

function H.log(s) io.stdout:write(s .. "\n") end

function H.env(name)
  local v = os.getenv(name)
  if not v or v == "" then error("missing environment variable " .. name) end
  return v
end

function H.check(name, ok, detail)
  if ok then
    H.passes = H.passes + 1
    H.log("PASS " .. name)
  else
    H.failures = H.failures + 1
    H.log("FAIL " .. name .. (detail and (": " .. detail) or ""))
  end
  return ok
end

function H.eq(name, got, want)
  return H.check(name, got == want, ("got %s, want %s"):format(vim.inspect(got), vim.inspect(want)))
end

-- Waits, inside H.run's coroutine, until cond() returns a truthy value or `ms` pass; returns it.
function H.wait(ms, cond)
  local co = coroutine.running()
  local deadline = vim.uv.now() + ms
  while true do
    local v = cond and cond()
    if v then return v end
    if vim.uv.now() >= deadline then return nil end
    vim.defer_fn(function() assert(coroutine.resume(co)) end, 50)
    coroutine.yield()
  end
end

function H.sleep(ms) H.wait(ms, nil) end

function H.feed(keys)
  -- "m": remap, so that buffer-local keymaps apply; "t": as if typed.
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), "mt", false)
end

function H.finish()
  H.log(("%d passed, %d failed"):format(H.passes, H.failures))
  vim.cmd(H.failures == 0 and H.passes > 0 and "qa!" or "cquit 1")
end

-- Runs fn in a coroutine started from the main loop; any error fails the run.
function H.run(fn)
  vim.cmd("filetype on") -- -u NONE leaves it off, and vim.lsp.enable starts servers on FileType
  vim.o.showmode = false
  vim.o.swapfile = false
  vim.o.shortmess = vim.o.shortmess .. "Fc"
  local function body()
    local ok, err = xpcall(fn, debug.traceback)
    if not ok then H.check("script", false, err) end
    H.finish()
  end
  vim.defer_fn(function() assert(coroutine.resume(coroutine.create(body))) end, 100)
  -- Whatever happens, stop in the end.
  vim.defer_fn(function() H.log("FAIL timeout: the script ran past 240 s"); vim.cmd("cquit 1") end, 240000)
end

function H.setup_plugin(extra)
  vim.opt.runtimepath:prepend(H.env("FORESIGHT_REPO") .. "/editors/nvim")
  local fs = require("foresight")
  local settings = vim.json.decode(os.getenv("FORESIGHT_CONFIG") or "{}")
  fs.setup(vim.tbl_deep_extend("force", {
    cmd = { H.env("FORESIGHT_BIN"), "serve" },
    model = H.env("FORESIGHT_MODEL"),
    settings = settings,
  }, extra or {}))
  return fs
end

-- Opens the sample file and waits for the foresight client; returns buf, client.
function H.open_sample()
  vim.cmd("edit " .. vim.fn.fnameescape(H.env("FORESIGHT_SAMPLE")))
  local buf = vim.api.nvim_get_current_buf()
  local client = H.wait(60000, function() return vim.lsp.get_clients({ bufnr = buf, name = "foresight" })[1] end)
  assert(client, "the foresight client did not attach within 60 s")
  assert(H.wait(60000, function() return client.initialized end), "the server did not initialize within 60 s")
  return buf, client
end

-- The position to complete at: the end of the last non-empty line.
function H.target(buf)
  local lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  local row = #lines
  while row > 1 and lines[row] == "" do row = row - 1 end
  return row, lines[row]
end

-- Asks the server directly (same client, same buffer) what it suggests at (row, col), waiting
-- for the model to load. `method` is textDocument/inlineCompletion or textDocument/completion.
function H.ask(client, buf, row, col, method)
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(buf) },
    position = { line = row - 1, character = col },
    context = method == "textDocument/inlineCompletion" and { triggerKind = 1 } or { triggerKind = 1 },
  }
  return H.wait(90000, function()
    local done, result = false, nil
    client:request(method, params, function(err, res) done = true; result = (not err) and res or nil end, buf)
    H.wait(30000, function() return done end)
    local items = result and (result.items or result) or {}
    if #items > 0 then return items end
    return nil
  end)
end

return H
