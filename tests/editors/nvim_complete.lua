-- Driven by tests/test_editor_neovim.py: open the file, wait for rwkv-hub's server to attach, ask it for
-- completion and inline completion at the end of the file and for code actions on the first line,
-- write what came back as JSON, quit.
local out = {}
vim.cmd("edit " .. vim.fn.fnameescape(vim.env.RWKV_TEST_FILE))
out.filetype = vim.bo.filetype

local function client()
  for _, c in pairs(vim.lsp.buf_get_clients(0)) do
    if c.name == "rwkv-hub" and c.server_capabilities and next(c.server_capabilities) then
      return c
    end
  end
end
out.attached = vim.wait(30000, function() return client() ~= nil end, 50)

local last = vim.api.nvim_buf_line_count(0)
local line = vim.api.nvim_buf_get_lines(0, last - 1, last, false)[1]
local at_end = { textDocument = { uri = vim.uri_from_bufnr(0) }, position = { line = last - 1, character = #line } }

local function ask(method, params)
  local got = {}
  for _, r in pairs(vim.lsp.buf_request_sync(0, method, params, 60000) or {}) do
    if r.err then got.error = r.err.message end
    if r.result then got.result = r.result end
  end
  return got
end

out.completion = ask("textDocument/completion", at_end)
out.inline = ask("textDocument/inlineCompletion", vim.tbl_extend("force", at_end, { context = { triggerKind = 1 } }))
out.actions = ask("textDocument/codeAction", {
  textDocument = { uri = vim.uri_from_bufnr(0) },
  range = { start = { line = 0, character = 0 }, ["end"] = { line = 0, character = 9 } },
  context = { diagnostics = {} },
})

local f = assert(io.open(vim.env.RWKV_TEST_OUT, "w"))
f:write(vim.fn.json_encode(out))
f:close()
vim.cmd("qa!")
