-- :checkhealth foresight
local M = {}

function M.check()
  local h = vim.health
  local fs = require("foresight")
  local cfg = fs.config
  h.start("foresight")

  local v = vim.version()
  if vim.fn.has("nvim-0.12") == 1 and fs.has_inline() then
    h.ok(("Neovim %d.%d.%d: ghost text through vim.lsp.inline_completion"):format(v.major, v.minor, v.patch))
  elseif vim.fn.has("nvim-0.11") == 1 then
    h.warn(("Neovim %d.%d.%d: no inline completion; suggestions come through the completion menu"):format(v.major, v.minor, v.patch),
      { "Neovim 0.12 or newer shows suggestions as ghost text" })
  else
    h.error("Neovim 0.11 or newer is needed (vim.lsp.config, vim.lsp.enable)")
  end

  if not vim.lsp.config or not vim.lsp.config.foresight then
    h.error("setup() has not run", { 'call require("foresight").setup({ model = "..." }) in your init.lua' })
    return
  end

  local exe = cfg.cmd and cfg.cmd[1]
  if exe and vim.fn.executable(exe) == 1 then
    local out = vim.fn.system({ exe, "--version" })
    if vim.v.shell_error == 0 then
      h.ok(("server: %s (%s)"):format(vim.fn.exepath(exe), vim.trim(out)))
    else
      h.error(("server %s does not run: %s"):format(exe, vim.trim(out)))
    end
  else
    h.error(("server %s is not executable"):format(tostring(exe)),
      { "install it with `cargo install --path .` in a Foresight checkout, or set cmd = { '/path/to/foresight', 'serve' }" })
  end

  if cfg.model then
    local dir = vim.fs.normalize(cfg.model)
    local missing = {}
    for _, f in ipairs({ "config.json", "tokenizer.json" }) do
      if vim.fn.filereadable(dir .. "/" .. f) ~= 1 then table.insert(missing, f) end
    end
    if vim.fn.filereadable(dir .. "/model.safetensors") ~= 1 and vim.fn.filereadable(dir .. "/model.safetensors.index.json") ~= 1 then
      table.insert(missing, "model.safetensors")
    end
    if #missing == 0 then
      h.ok("model: " .. dir)
    else
      h.error(("model %s lacks %s"):format(dir, table.concat(missing, ", ")))
    end
  else
    h.info("model: the server's default (models/default, or `serve --model DIR` in cmd)")
  end

  local clients = vim.lsp.get_clients({ name = "foresight" })
  if #clients == 0 then
    h.info("no foresight client running yet (it starts with the first buffer)")
  end
  for _, c in ipairs(clients) do
    local caps = c.server_capabilities or {}
    local bufs = vim.tbl_keys(c.attached_buffers or {})
    h.ok(("client %d running, attached to %d buffer(s), position encoding %s"):format(c.id, #bufs, tostring(c.offset_encoding)))
    if caps.inlineCompletionProvider then
      h.ok("server offers inline completion")
    else
      h.warn("server does not offer inline completion (an old foresight?)")
    end
  end
  for name, lhs in pairs(cfg.keymaps or {}) do
    if lhs and lhs ~= "" then h.info(("keymap %s: %s"):format(name, lhs)) end
  end
end

return M
