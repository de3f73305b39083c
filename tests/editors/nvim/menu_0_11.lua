-- Neovim 0.11 (no inline completion), headless: the plugin falls back to vim.lsp.completion; the
-- trigger keymap (<C-Space>) opens the completion menu with the server's suggestion, and
-- accepting it inserts the suggestion.
-- usage: nvim --headless -u NONE -i NONE -S menu_0_11.lua   (environment: see helpers.lua)
local here = vim.fs.dirname(debug.getinfo(1, "S").source:sub(2))
package.path = here .. "/?.lua;" .. package.path
local H = require("helpers")

H.run(function()
  local fs = H.setup_plugin()
  H.log("neovim " .. tostring(vim.version()))
  H.check("no inline completion here: the fallback path is under test", not fs.has_inline())
  vim.o.completeopt = "menuone,noselect"

  local buf, client = H.open_sample()
  local row, line = H.target(buf)
  local items = H.ask(client, buf, row, #line, "textDocument/completion")
  assert(items, "the server gave no completion within 90 s")
  local edit = items[1].textEdit
  H.check("completion item has a text edit", edit ~= nil)
  local new_text = edit.newText
  H.log("server suggests: " .. vim.inspect(new_text))

  vim.api.nvim_win_set_cursor(0, { row, 0 })
  H.feed("A")
  H.wait(10000, function() return vim.api.nvim_get_mode().mode == "i" end)
  H.feed("<C-Space>")
  local info = H.wait(60000, function()
    local i = vim.fn.complete_info({ "items", "pum_visible" })
    return (i.pum_visible == 1 and #i.items > 0) and i or nil
  end)
  H.check("the completion menu opens", info ~= nil)
  info = info or { items = {} }
  local words = {}
  for _, it in ipairs(info.items) do table.insert(words, it.word) end
  H.log("menu: " .. vim.inspect(words))
  local col0 = edit.range.start.character
  local typed = line:sub(col0 + 1)
  H.eq("the menu offers the server's suggestion", words[1], new_text)
  H.feed("<C-n><C-y>")
  local got = H.wait(10000, function()
    local l = vim.api.nvim_buf_get_lines(buf, row - 1, row, false)[1]
    return l ~= line and l or nil
  end)
  H.eq("accepting inserts the suggestion", got, line:sub(1, col0) .. new_text)
  H.check("the typed word is part of the edit", new_text:sub(1, #typed) == typed)
  H.feed("<Esc>")
end)
