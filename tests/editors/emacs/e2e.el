;;; e2e.el --- Emacs 30 + eglot + editors/emacs/foresight.el against the real server  -*- lexical-binding: t; -*-
;; usage: emacs -Q --batch -l e2e.el
;; Environment: FORESIGHT_BIN, FORESIGHT_MODEL, FORESIGHT_SAMPLE, FORESIGHT_REPO, FORESIGHT_CONFIG.
;; Checks that completion-at-point offers the server's suggestion and inserts it.

(require 'cl-lib)
(defvar e2e-passes 0)
(defvar e2e-failures 0)
(defun e2e-check (name ok &optional detail)
  (if ok (cl-incf e2e-passes) (cl-incf e2e-failures))
  (princ (format "%s %s%s\n" (if ok "PASS" "FAIL") name (if (and detail (not ok)) (format ": %s" detail) "")))
  ok)
(defun e2e-eq (name got want)
  (e2e-check name (equal got want) (format "got %S, want %S" got want)))
(defun e2e-env (name)
  (or (getenv name) (error "missing environment variable %s" name)))
(defun e2e-wait (seconds pred)
  "Call PRED until it returns non-nil or SECONDS pass, letting process output in."
  (let ((deadline (+ (float-time) seconds)) v)
    (while (and (not (setq v (funcall pred))) (< (float-time) deadline))
      (accept-process-output nil 0.1))
    v))

(condition-case err
    (progn
      (add-to-list 'load-path (expand-file-name "editors/emacs" (e2e-env "FORESIGHT_REPO")))
      (require 'foresight)
      (setq eglot-sync-connect 60
            eglot-connect-timeout 60
            foresight-command (list (e2e-env "FORESIGHT_BIN") "serve")
            foresight-model (e2e-env "FORESIGHT_MODEL")
            foresight-settings (let ((c (getenv "FORESIGHT_CONFIG")))
                                 (and c (json-parse-string c :object-type 'plist))))
      (foresight-eglot-setup)
      (princ (format "emacs %s\n" emacs-version))
      (with-current-buffer (find-file-noselect (e2e-env "FORESIGHT_SAMPLE"))
        (e2e-eq "python-mode from the file name" major-mode 'python-mode)
        ;; eglot-ensure waits for post-command-hook, which --batch never runs: connect directly.
        (apply #'eglot--connect (eglot--guess-contact))
        (let ((server (eglot-current-server)))
          (e2e-check "eglot connected to a foresight-server" (object-of-class-p server 'foresight-server) (format "%S" server))
          ;; The cursor: the end of the last non-empty line.
          (goto-char (point-max))
          (skip-chars-backward "\n")
          (let* ((line-start (line-beginning-position))
                 (line (buffer-substring-no-properties line-start (point)))
                 (items (e2e-wait 90 (lambda ()
                                       (let ((res (jsonrpc-request server :textDocument/completion
                                                                   (eglot--TextDocumentPositionParams))))
                                         (let ((it (plist-get res :items)))
                                           (and (> (length it) 0) it))))))
                 (item (and items (aref items 0)))
                 (edit (plist-get item :textEdit))
                 (new-text (plist-get edit :newText))
                 (label (plist-get item :label)))
            (e2e-check "the server answers textDocument/completion" item)
            (princ (format "server suggests: %S (label %S)\n" new-text label))
            (let* ((capf (eglot-completion-at-point))
                   (cands (and capf (all-completions "" (nth 2 capf)))))
              (princ (format "capf candidates: %S\n" cands))
              (e2e-check "completion-at-point offers the server's suggestion"
                         (member label cands) (format "%S not in %S" label cands)))
            ;; The command a user runs (M-x completion-at-point, C-M-i): one candidate, so it inserts.
            (let ((start (point)))
              (completion-at-point)
              (e2e-eq "completion-at-point inserts the suggestion"
                      (buffer-substring-no-properties line-start (line-end-position))
                      (concat (substring line 0 (plist-get (plist-get (plist-get edit :range) :start) :character))
                              new-text))
              (e2e-check "the cursor was at the end of the line" (= start (+ line-start (length line)))))
            (e2e-eq "the cursor ends after the suggestion" (- (point) line-start) (+ (length line) (length new-text))))
          (set-buffer-modified-p nil)
          (eglot-shutdown server))))
  (error (e2e-check "script" nil (format "%S" err))))
(princ (format "%d passed, %d failed\n" e2e-passes e2e-failures))
(kill-emacs (if (and (= e2e-failures 0) (> e2e-passes 0)) 0 1))
