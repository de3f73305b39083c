-- Foresight for Neovim: starts `foresight serve` through vim.lsp.config/vim.lsp.enable (0.11+),
-- shows ghost text through vim.lsp.inline_completion (0.12+) and falls back to
-- vim.lsp.completion (0.11).
--
--   require("foresight").setup({ model = "/path/to/model" })
--
-- Keymaps (insert mode, 0.12+): <Tab> accepts the suggestion (a plain <Tab> when there is none),
-- <M-Right> accepts a word, <M-C-Right> a line, <C-]> dismisses, <M-]>/<M-[> cycle.
-- On 0.11: <C-Space> asks for a completion (the popup menu), as does <C-x><C-o>.
local M = {}

M.defaults = {
  -- The server command. `model`, `device` and `max_tokens` below go in initializationOptions.
  cmd = { "foresight", "serve" },
  model = nil, -- model directory; nil: the server's default (models/default or `serve --model`)
  device = nil, -- "cpu" or "cuda"
  max_tokens = nil, -- most tokens per suggestion
  settings = {}, -- any other server settings (maxTokens, lines, speculative, temperature...)
  filetypes = nil, -- nil: every filetype
  root_markers = { ".git" },
  ghost_text = true, -- 0.12+: inline completion; false: use the completion menu as on 0.11
  keymaps = {
    accept = "<Tab>",
    accept_word = "<M-Right>",
    accept_line = "<M-C-Right>",
    dismiss = "<C-]>",
    next = "<M-]>",
    prev = "<M-[>",
    trigger = "<C-Space>", -- completion-menu mode: ask for a completion
  },
}

M.config = vim.deepcopy(M.defaults)

--- Whether this Neovim has ghost text (`vim.lsp.inline_completion`, 0.12+).
function M.has_inline()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.get ~= nil
end

--- The settings sent as initializationOptions and in workspace/didChangeConfiguration.
function M.server_settings(cfg)
  cfg = cfg or M.config
  local s = vim.deepcopy(cfg.settings or {})
  if cfg.model then s.model = vim.fs.normalize(cfg.model) end
  if cfg.device then s.device = cfg.device end
  if cfg.max_tokens then s.maxTokens = cfg.max_tokens end
  return s
end

--- The part of `text` that "accept word" inserts: leading blanks and one word, or one run of
--- punctuation.
function M.first_word(text)
  return text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text
end

--- The part of `text` that "accept line" inserts: up to the end of the first line (a suggestion
--- that starts with a line break takes that break and the next line).
function M.first_line(text)
  return text:match("^\n[^\n]*") or text:match("^[^\n]*") or text
end

--- Accepts the shown suggestion, or only its first word or line (`part` "word"/"line").
--- Returns false when no suggestion is shown.
function M.accept(part)
  if not M.has_inline() then return false end
  local on_accept
  if part == "word" or part == "line" then
    local cut = part == "word" and M.first_word or M.first_line
    on_accept = function(item)
      if type(item.insert_text) == "string" then
        item.insert_text = cut(item.insert_text)
      end
      return item
    end
  end
  return vim.lsp.inline_completion.get({ on_accept = on_accept })
end

--- Hides the shown suggestion without inserting anything; typing asks for a new one.
function M.dismiss(buf)
  if not M.has_inline() then return end
  buf = (buf == nil or buf == 0) and vim.api.nvim_get_current_buf() or buf
  if vim.lsp.inline_completion.is_enabled({ bufnr = buf }) then
    vim.lsp.inline_completion.enable(false, { bufnr = buf })
    vim.lsp.inline_completion.enable(true, { bufnr = buf })
  end
end

--- The text of the ghost text shown in `buf` (for tests and statuslines), or nil.
function M.ghost_text(buf)
  buf = (buf == nil or buf == 0) and vim.api.nvim_get_current_buf() or buf
  local ns = vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
  if not ns then return nil end
  for _, m in ipairs(vim.api.nvim_buf_get_extmarks(buf, ns, 0, -1, { details = true })) do
    local d = m[4]
    if d.virt_text then
      local parts = {}
      for _, chunk in ipairs(d.virt_text) do
        if chunk[2] == "ComplHint" then table.insert(parts, chunk[1]) end
      end
      local lines = { table.concat(parts) }
      for _, vl in ipairs(d.virt_lines or {}) do
        local l = {}
        for _, chunk in ipairs(vl) do
          if chunk[2] == "ComplHint" then table.insert(l, chunk[1]) end
        end
        table.insert(lines, table.concat(l))
      end
      return table.concat(lines, "\n")
    end
  end
  return nil
end

local function map(buf, lhs, rhs, desc, expr)
  if lhs and lhs ~= "" then
    vim.keymap.set("i", lhs, rhs, { buffer = buf, desc = "Foresight: " .. desc, expr = expr, silent = true })
  end
end

local function set_inline_keymaps(buf, km)
  map(buf, km.accept, function()
    if not M.accept() then
      return vim.api.nvim_replace_termcodes(km.accept, true, false, true)
    end
    return ""
  end, "accept the suggestion", true)
  map(buf, km.accept_word, function() M.accept("word") end, "accept a word of the suggestion")
  map(buf, km.accept_line, function() M.accept("line") end, "accept a line of the suggestion")
  map(buf, km.dismiss, function() M.dismiss(buf) end, "dismiss the suggestion")
  map(buf, km.next, function() vim.lsp.inline_completion.select({ count = 1 }) end, "next suggestion")
  map(buf, km.prev, function() vim.lsp.inline_completion.select({ count = -1 }) end, "previous suggestion")
end

local function set_menu_keymaps(buf, km)
  map(buf, km.trigger, function() vim.lsp.completion.get() end, "ask for a completion")
end

local function on_attach(client, buf)
  local cfg = M.config
  if cfg.ghost_text and M.has_inline() then
    vim.lsp.inline_completion.enable(true, { bufnr = buf })
    set_inline_keymaps(buf, cfg.keymaps)
  elseif vim.lsp.completion and vim.lsp.completion.enable then
    vim.lsp.completion.enable(true, client.id, buf, { autotrigger = false })
    set_menu_keymaps(buf, cfg.keymaps)
  end
end

--- Configures and enables the `foresight` language server. Call once, from your init.lua.
function M.setup(opts)
  if vim.fn.has("nvim-0.11") ~= 1 then
    vim.notify("foresight: Neovim 0.11 or newer is needed (vim.lsp.config)", vim.log.levels.ERROR)
    return
  end
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  local cfg = M.config
  local settings = M.server_settings(cfg)
  vim.lsp.config("foresight", {
    cmd = cfg.cmd,
    filetypes = cfg.filetypes,
    root_markers = cfg.root_markers,
    init_options = settings,
    settings = { foresight = settings },
    on_attach = on_attach,
  })
  vim.lsp.enable("foresight") -- with filetypes = nil, every buffer
end

--- Sends new settings to the running server (workspace/didChangeConfiguration).
function M.update(settings)
  M.config = vim.tbl_deep_extend("force", M.config, settings or {})
  local s = M.server_settings()
  for _, client in ipairs(vim.lsp.get_clients({ name = "foresight" })) do
    client.settings = { foresight = s }
    client:notify("workspace/didChangeConfiguration", { settings = { foresight = s } })
  end
end

return M
