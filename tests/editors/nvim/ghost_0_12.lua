-- Neovim 0.12, headless: ghost text from the real server appears in the buffer, and the plugin's
-- keymaps accept it whole (<Tab>), accept a word (<M-Right>) and dismiss it (<C-]>).
-- usage: nvim --headless -u NONE -i NONE -S ghost_0_12.lua   (environment: see helpers.lua)
local here = vim.fs.dirname(debug.getinfo(1, "S").source:sub(2))
package.path = here .. "/?.lua;" .. package.path
local H = require("helpers")

H.run(function()
  local fs = H.setup_plugin()
  H.check("neovim is 0.12+ with vim.lsp.inline_completion", fs.has_inline())
  H.eq("first_word", fs.first_word("  foo(bar)"), "  foo")
  H.eq("first_word punctuation", fs.first_word("(bar)"), "(")
  H.eq("first_line", fs.first_line("ab\ncd"), "ab")
  H.eq("first_line leading break", fs.first_line("\n    x = 1\ny"), "\n    x = 1")

  local buf, client = H.open_sample()
  H.check("server advertises inlineCompletionProvider", client.server_capabilities.inlineCompletionProvider ~= nil)
  H.check("inline completion enabled in the buffer", vim.lsp.inline_completion.is_enabled({ bufnr = buf }))
  local row, line = H.target(buf)
  local items = H.ask(client, buf, row, #line, "textDocument/inlineCompletion")
  assert(items, "the server gave no inline completion within 90 s")
  local want = items[1].insertText
  H.log("server suggests: " .. vim.inspect(want))
  H.check("suggestion is not empty", want ~= nil and want ~= "")

  -- 1. Ghost text appears after the cursor; <Tab> inserts it.
  vim.api.nvim_win_set_cursor(0, { row, 0 })
  H.feed("A")
  H.check("insert mode", H.wait(10000, function() return vim.api.nvim_get_mode().mode == "i" end) ~= nil)
  local ghost = H.wait(60000, function() return fs.ghost_text(buf) end)
  H.eq("ghost text shows the server's suggestion", ghost, want)
  H.eq("the buffer is unchanged while ghost text shows", vim.api.nvim_buf_get_lines(buf, row - 1, row, false)[1], line)
  H.feed("<Tab>")
  local accepted = line .. want
  local got = H.wait(10000, function()
    local l = vim.api.nvim_buf_get_lines(buf, row - 1, row, false)[1]
    return l ~= line and l or nil
  end)
  H.eq("<Tab> inserts the suggestion", table.concat(vim.api.nvim_buf_get_lines(buf, row - 1, -1, false), "\n"):sub(1, #accepted), accepted)
  H.eq("cursor after the inserted text", vim.api.nvim_win_get_cursor(0)[2], #accepted)
  H.check("line changed", got ~= nil)

  -- 2. Back to the original line: <M-Right> inserts one word.
  H.feed("<Esc>")
  H.wait(5000, function() return vim.api.nvim_get_mode().mode == "n" end)
  vim.api.nvim_buf_set_lines(buf, row - 1, row, false, { line })
  vim.api.nvim_win_set_cursor(0, { row, 0 })
  H.feed("A")
  ghost = H.wait(60000, function() return fs.ghost_text(buf) end)
  H.eq("ghost text again", ghost, want)
  H.feed("<M-Right>")
  local word = fs.first_word(want)
  got = H.wait(10000, function()
    local l = vim.api.nvim_buf_get_lines(buf, row - 1, row, false)[1]
    return l ~= line and l or nil
  end)
  H.eq("<M-Right> inserts one word", got, line .. word)

  -- 3. Dismiss: <C-]> hides the ghost text and leaves the buffer as it is.
  local rest = H.wait(60000, function() return fs.ghost_text(buf) end)
  H.check("ghost text for the rest after a word", rest ~= nil and rest ~= "", vim.inspect(rest))
  local before = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  H.feed("<C-]>")
  H.eq("<C-]> hides the ghost text", H.wait(10000, function() return fs.ghost_text(buf) == nil and "gone" or nil end), "gone")
  H.sleep(500)
  H.eq("nothing inserted by dismiss", table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), "\n"), table.concat(before, "\n"))
  H.feed("<Esc>")

  -- 4. :checkhealth foresight runs and reports the server.
  vim.cmd("checkhealth foresight")
  local health = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
  H.check("checkhealth foresight reports the running client", health:find("client %d+ running") ~= nil, health)
  H.check("checkhealth foresight has no ERROR", not health:find("ERROR"), health)
end)
