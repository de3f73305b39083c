;;; foresight.el --- Foresight code completion through eglot  -*- lexical-binding: t; -*-

;; Version: 0.1.0
;; Package-Requires: ((emacs "29.1"))
;; Keywords: languages, tools, completion

;;; Commentary:

;; Registers `foresight serve' (a local code-completion language server) with eglot, so that its
;; suggestions come through `completion-at-point' (and so through corfu or company).
;;
;;   (require 'foresight)
;;   (setq foresight-model "~/models/foresight")
;;   (foresight-eglot-setup)            ; then M-x eglot in a buffer of `foresight-modes'
;;
;; eglot runs one server per buffer: in these modes Foresight takes the place of the language's
;; own server.  `foresight-modes' chooses which.

;;; Code:

(require 'eglot)

(defgroup foresight nil
  "Local code completion with Foresight."
  :group 'tools
  :prefix "foresight-")

(defcustom foresight-command '("foresight" "serve")
  "Command that starts the Foresight language server."
  :type '(repeat string))

(defcustom foresight-model nil
  "Model directory.
nil uses the server's default (models/default or `serve --model')."
  :type '(choice (const :tag "Server default" nil) directory))

(defcustom foresight-device nil
  "Where the model runs: nil (the server's default), \"cpu\" or \"cuda\"."
  :type '(choice (const nil) (const "cpu") (const "cuda")))

(defcustom foresight-max-tokens nil
  "Most tokens per suggestion; nil uses the server's default."
  :type '(choice (const nil) natnum))

(defcustom foresight-settings nil
  "Other server settings as a plist, e.g. (:lines \"single\" :speculative t)."
  :type 'plist)

(defcustom foresight-modes
  '(python-mode python-ts-mode rust-mode rust-ts-mode c-mode c-ts-mode c++-mode c++-ts-mode
    go-mode go-ts-mode js-mode js-ts-mode typescript-ts-mode java-mode java-ts-mode sh-mode
    bash-ts-mode emacs-lisp-mode lua-mode ruby-mode ruby-ts-mode)
  "Major modes in which eglot starts Foresight."
  :type '(repeat symbol))

(defun foresight-settings ()
  "The server settings as a plist.
They go in initializationOptions and in didChangeConfiguration."
  (append (when foresight-model (list :model (expand-file-name foresight-model)))
          (when foresight-device (list :device foresight-device))
          (when foresight-max-tokens (list :maxTokens foresight-max-tokens))
          foresight-settings))

(defclass foresight-server (eglot-lsp-server) ()
  :documentation "The Foresight language server.")

(cl-defmethod eglot-initialization-options ((_server foresight-server))
  (or (foresight-settings) (cl-call-next-method)))

(defun foresight-contact (&optional _interactive)
  "The eglot contact for Foresight: its class and command."
  (cons 'foresight-server foresight-command))

;;;###autoload
(defun foresight-eglot-setup ()
  "Make eglot start Foresight in `foresight-modes'."
  (interactive)
  (setf (alist-get foresight-modes eglot-server-programs nil nil #'equal) #'foresight-contact)
  ;; Put it first, so that it wins over the servers eglot knows for these modes.
  (let ((entry (assoc foresight-modes eglot-server-programs)))
    (setq eglot-server-programs (cons entry (delq entry eglot-server-programs)))))

(defun foresight-update-settings ()
  "Send the current settings to the running Foresight servers."
  (interactive)
  (dolist (server (hash-table-values eglot--servers-by-project))
    (dolist (s server)
      (when (object-of-class-p s 'foresight-server)
        (jsonrpc-notify s :workspace/didChangeConfiguration
                        (list :settings (list :foresight (foresight-settings))))))))

(provide 'foresight)
;;; foresight.el ends here
