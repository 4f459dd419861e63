-- rwkv-hub completions in Neovim 0.7 or newer: source this from your init.lua
-- (`dofile("/path/to/rwkv-hub.lua")`) or copy it in. It starts one `rwkv-hub lsp` for the file types
-- below and attaches it to their buffers. The daemon must be running (`rwkv-hub serve`); if it is not,
-- the server says so once and keeps trying.
--
--   <C-x><C-o>   completion from the model (insert mode, through 'omnifunc')
--   <leader>ra   code actions on the selection: explain, docstring, translate, rewrite (visual mode)
--   ghost text   Neovim 0.12+ shows inline completions itself: vim.lsp.inline_completion.enable()
--
-- Options go to the server as initializationOptions (see docs/editors.md): set
-- vim.g.rwkv_hub_options before sourcing this file to change them.

local filetypes = { "python", "lua", "javascript", "typescript", "rust", "go", "c", "cpp", "sh", "markdown" }
local options = vim.g.rwkv_hub_options or { max_lines = 8 }
local client_id = nil

local function attach(bufnr)
  if client_id == nil or vim.lsp.get_client_by_id(client_id) == nil then
    client_id = vim.lsp.start_client({
      name = "rwkv-hub",
      cmd = { "rwkv-hub", "lsp" },
      root_dir = vim.fn.getcwd(),
      init_options = options,
    })
  end
  if client_id == nil then
    return
  end
  vim.lsp.buf_attach_client(bufnr, client_id)
  vim.bo[bufnr].omnifunc = "v:lua.vim.lsp.omnifunc"
  local code_action = vim.lsp.buf.range_code_action or vim.lsp.buf.code_action -- 0.7 has the first
  vim.keymap.set("v", "<leader>ra", code_action, { buffer = bufnr, desc = "rwkv-hub: act on the selection" })
  if vim.lsp.inline_completion then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  end
end

vim.api.nvim_create_autocmd("FileType", {
  pattern = filetypes,
  callback = function(args)
    attach(args.buf)
  end,
})
