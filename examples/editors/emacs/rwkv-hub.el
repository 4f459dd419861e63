;;; rwkv-hub.el --- rwkv-hub completions in Emacs through eglot  -*- lexical-binding: t; -*-

;; Load this from your init file. Eglot runs one server per buffer, so these modes get rwkv-hub
;; instead of their usual language server; pick the modes where you want the model's completions.
;; Completion comes through completion-at-point (M-TAB, or corfu/company); `eglot-code-actions' on a
;; region offers explain, docstring, translate and rewrite. The daemon must be running: `rwkv-hub serve'.
;; The options are described in docs/editors.md.

(with-eval-after-load 'eglot
  (add-to-list 'eglot-server-programs
               '((python-mode python-ts-mode js-mode js-ts-mode)
                 . ("rwkv-hub" "lsp"
                    :initializationOptions (:max_lines 8 :translate_to "English")))))

(add-hook 'python-mode-hook #'eglot-ensure)

;;; rwkv-hub.el ends here
