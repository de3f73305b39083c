//! Which repository files become training text: the language table, and the filters that skip
//! vendored folders, lock files, binaries, oversized, minified or generated files, and likely
//! secrets. Pure decisions on a path or a file's bytes; walking the disk lives in `corpus.rs`.

use std::path::Path;

/// Files larger than this are skipped (the issue's 1 MB).
pub const MAX_FILE_BYTES: u64 = 1_000_000;

/// A line longer than this marks a file as minified or machine-written.
pub const MAX_LINE_BYTES: usize = 1000;

/// A mean line length above this marks a file as minified.
pub const MAX_MEAN_LINE_BYTES: usize = 200;

/// Folders whose contents are someone else's code or build output; the walk does not enter them.
pub const VENDORED_DIRS: [&str; 11] = [
    "node_modules",
    "target",
    "vendor",
    "dist",
    ".venv",
    "venv",
    "third_party",
    "bower_components",
    "__pycache__",
    ".git",
    ".tox",
];

/// Why a file was left out of the training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// Its extension is not in the language table.
    NotSource,
    /// Inside a vendored or build folder (counted once per folder, which is not entered).
    Vendored,
    LockFile,
    /// Its name says it holds credentials (`.env*`, `*.pem`, `*.key`, `id_rsa*`...).
    SecretFileName,
    /// It contains a private-key header.
    PrivateKey,
    /// It contains a token that looks like an API key or password.
    ApiKey,
    TooLarge,
    /// NUL bytes or invalid UTF-8.
    Binary,
    /// Long lines or a `.min.` name.
    Minified,
    /// An `@generated` / "DO NOT EDIT" marker or a generated-file name.
    Generated,
    Empty,
    /// Same bytes as a file already kept.
    Duplicate,
    /// Could not be read.
    Unreadable,
}

impl SkipReason {
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::NotSource => "not a source file (extension not in the language table)",
            SkipReason::Vendored => "vendored or build folder (not entered)",
            SkipReason::LockFile => "lock file",
            SkipReason::SecretFileName => "secret file name (.env, *.pem, *.key, id_rsa...)",
            SkipReason::PrivateKey => "contains a private key",
            SkipReason::ApiKey => "contains what looks like an API key or password",
            SkipReason::TooLarge => "larger than the size limit",
            SkipReason::Binary => "binary (NUL bytes or not UTF-8)",
            SkipReason::Minified => "minified (very long lines)",
            SkipReason::Generated => "generated (@generated / DO NOT EDIT)",
            SkipReason::Empty => "empty or whitespace only",
            SkipReason::Duplicate => "exact duplicate of a kept file",
            SkipReason::Unreadable => "unreadable",
        }
    }
}

/// The language of a source file from its name, or `None` when it is not source we train on.
pub fn language_of(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    match name {
        "Makefile" | "makefile" | "GNUmakefile" => return Some("make"),
        "Dockerfile" => return Some("dockerfile"),
        "CMakeLists.txt" => return Some("cmake"),
        _ => {}
    }
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "rs" => "rust",
        "py" | "pyi" => "python",
        "js" | "jsx" | "mjs" | "cjs" => "javascript",
        "ts" | "tsx" | "mts" | "cts" => "typescript",
        "go" => "go",
        "c" | "h" => "c",
        "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" | "ipp" => "cpp",
        "java" => "java",
        "kt" | "kts" => "kotlin",
        "scala" | "sc" => "scala",
        "swift" => "swift",
        "cs" => "csharp",
        "fs" | "fsx" => "fsharp",
        "rb" => "ruby",
        "php" => "php",
        "lua" => "lua",
        "sh" | "bash" | "zsh" => "shell",
        "ps1" => "powershell",
        "hs" => "haskell",
        "ml" | "mli" => "ocaml",
        "ex" | "exs" => "elixir",
        "erl" | "hrl" => "erlang",
        "clj" | "cljs" => "clojure",
        "dart" => "dart",
        "zig" => "zig",
        "nim" => "nim",
        "jl" => "julia",
        "r" => "r",
        "m" | "mm" => "objc",
        "sql" => "sql",
        "html" | "htm" => "html",
        "css" | "scss" | "sass" | "less" => "css",
        "vue" => "vue",
        "svelte" => "svelte",
        "toml" => "toml",
        "yaml" | "yml" => "yaml",
        "md" | "markdown" => "markdown",
        "proto" => "protobuf",
        "cmake" => "cmake",
        "vim" => "vim",
        "el" => "elisp",
        _ => return None,
    })
}

/// True for a folder name the walk must not enter.
pub fn is_vendored_dir(name: &str) -> bool {
    VENDORED_DIRS.contains(&name)
}

/// A skip decided from the file name alone (checked before the language table, so a secret or lock
/// file is reported as such whatever its extension).
pub fn skip_by_name(path: &Path) -> Option<SkipReason> {
    let name = path.file_name()?.to_str()?;
    let lower = name.to_ascii_lowercase();
    let secret = lower == ".env"
        || lower.starts_with(".env.")
        || lower.ends_with(".env")
        || lower.starts_with("id_rsa")
        || lower.starts_with("id_dsa")
        || lower.starts_with("id_ecdsa")
        || lower.starts_with("id_ed25519")
        || [
            ".pem",
            ".key",
            ".p12",
            ".pfx",
            ".keystore",
            ".jks",
            ".asc",
            ".gpg",
        ]
        .iter()
        .any(|e| lower.ends_with(e))
        || matches!(
            lower.as_str(),
            ".npmrc" | ".pypirc" | ".netrc" | ".htpasswd" | "credentials" | "credentials.json"
        );
    if secret {
        return Some(SkipReason::SecretFileName);
    }
    let lock = lower.ends_with(".lock")
        || matches!(
            lower.as_str(),
            "package-lock.json"
                | "pnpm-lock.yaml"
                | "go.sum"
                | "npm-shrinkwrap.json"
                | "gemfile.lock"
        );
    if lock {
        return Some(SkipReason::LockFile);
    }
    if lower.contains(".min.") {
        return Some(SkipReason::Minified);
    }
    let generated = lower.ends_with(".pb.go")
        || lower.ends_with("_pb2.py")
        || lower.ends_with("_pb2_grpc.py")
        || lower.ends_with(".pb.h")
        || lower.ends_with(".pb.cc")
        || lower.ends_with(".g.dart")
        || lower.ends_with(".freezed.dart")
        || lower.ends_with(".designer.cs");
    if generated {
        return Some(SkipReason::Generated);
    }
    None
}

/// The decision for a file's bytes: its text, or why it is skipped. `max_bytes` bounds the size.
pub fn check_content(bytes: &[u8], max_bytes: u64) -> Result<&str, SkipReason> {
    if bytes.len() as u64 > max_bytes {
        return Err(SkipReason::TooLarge);
    }
    if bytes.contains(&0) {
        return Err(SkipReason::Binary);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| SkipReason::Binary)?;
    if text.trim().is_empty() {
        return Err(SkipReason::Empty);
    }
    if contains_private_key(text) {
        return Err(SkipReason::PrivateKey);
    }
    if is_generated(text) {
        return Err(SkipReason::Generated);
    }
    if is_minified(text) {
        return Err(SkipReason::Minified);
    }
    if contains_api_key(text) {
        return Err(SkipReason::ApiKey);
    }
    Ok(text)
}

/// A PEM/OpenSSH/PGP private-key header anywhere in the text (also inside a string literal).
pub fn contains_private_key(text: &str) -> bool {
    text.lines().any(|line| {
        let l = line.trim();
        l.contains("-----BEGIN ") && (l.contains("PRIVATE KEY") || l.contains("PGP PRIVATE"))
    })
}

/// A generated-file marker in the first 25 lines: `@generated`, "DO NOT EDIT", "autogenerated".
pub fn is_generated(text: &str) -> bool {
    text.lines().take(25).any(|line| {
        let lower = line.to_ascii_lowercase();
        line.contains("@generated")
            || lower.contains("do not edit")
            || lower.contains("autogenerated")
            || lower.contains("auto-generated")
            || lower.contains("generated by the protocol buffer compiler")
    })
}

/// Very long lines: one over [`MAX_LINE_BYTES`], or a mean over [`MAX_MEAN_LINE_BYTES`].
pub fn is_minified(text: &str) -> bool {
    let mut lines = 0usize;
    let mut longest = 0usize;
    for line in text.lines() {
        lines += 1;
        longest = longest.max(line.len());
    }
    longest > MAX_LINE_BYTES || (lines > 0 && text.len() / lines > MAX_MEAN_LINE_BYTES)
}

/// Shannon entropy of `s` in bits per character.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Prefixes of well-known credential formats (AWS, GitHub, GitLab, Slack, Stripe, OpenAI, Google...).
const KEY_PREFIXES: [(&str, usize); 12] = [
    ("AKIA", 20),
    ("ASIA", 20),
    ("ghp_", 36),
    ("gho_", 36),
    ("ghs_", 36),
    ("github_pat_", 40),
    ("glpat-", 26),
    ("xoxb-", 24),
    ("xoxp-", 24),
    ("sk_live_", 24),
    ("sk-", 40),
    ("AIza", 39),
];

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '=')
}

/// Words that make a nearby high-entropy string a likely credential.
const SECRET_WORDS: [&str; 7] = [
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "credential",
    "auth",
];

/// A token that looks like a credential: a known key prefix with enough characters after it; or a
/// long mixed-case alphanumeric string with high entropy (>= 4.3 bits/char over >= 32 characters);
/// or, on a line that mentions a key, secret, token or password, a 20+ character string of letters
/// and digits with >= 3.5 bits/char. Tuned to leave ordinary identifiers, paths and hex hashes alone.
pub fn contains_api_key(text: &str) -> bool {
    text.lines().any(|line| {
        let lower = line.to_ascii_lowercase();
        let secret_context = SECRET_WORDS.iter().any(|w| lower.contains(w));
        line.split(|c: char| !is_token_char(c))
            .any(|token| looks_like_key(token, secret_context))
    })
}

fn looks_like_key(token: &str, secret_context: bool) -> bool {
    for (prefix, min_len) in KEY_PREFIXES {
        if token.starts_with(prefix) && token.len() >= min_len {
            let rest = &token[prefix.len()..];
            if rest.chars().any(|c| c.is_ascii_digit())
                && rest.chars().any(|c| c.is_ascii_alphabetic())
            {
                return true;
            }
        }
    }
    // Paths and module paths are not keys.
    if token.contains('/') && token.split('/').filter(|s| !s.is_empty()).count() > 2 {
        return false;
    }
    let digits = token.chars().filter(|c| c.is_ascii_digit()).count();
    let upper = token.chars().filter(|c| c.is_ascii_uppercase()).count();
    let lower = token.chars().filter(|c| c.is_ascii_lowercase()).count();
    if digits == 0 || upper + lower == 0 {
        return false;
    }
    let entropy = shannon_entropy(token);
    if token.len() >= 32 && upper > 0 && lower > 0 && digits >= 2 && entropy >= 4.3 {
        return true;
    }
    secret_context && token.len() >= 20 && digits >= 2 && entropy >= 3.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_table() {
        let cases = [
            ("src/main.rs", Some("rust")),
            ("a/b.py", Some("python")),
            ("x.tsx", Some("typescript")),
            ("x.JS", Some("javascript")),
            ("pkg/x.go", Some("go")),
            ("x.hpp", Some("cpp")),
            ("x.h", Some("c")),
            ("A.java", Some("java")),
            ("Makefile", Some("make")),
            ("logo.png", None),
            ("data.json", None),
            ("README", None),
        ];
        for (path, want) in cases {
            assert_eq!(language_of(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn skip_by_name_table() {
        let cases = [
            (".env", Some(SkipReason::SecretFileName)),
            (".env.production", Some(SkipReason::SecretFileName)),
            ("server.pem", Some(SkipReason::SecretFileName)),
            ("tls.key", Some(SkipReason::SecretFileName)),
            ("id_rsa", Some(SkipReason::SecretFileName)),
            ("id_rsa.pub", Some(SkipReason::SecretFileName)),
            ("Cargo.lock", Some(SkipReason::LockFile)),
            ("yarn.lock", Some(SkipReason::LockFile)),
            ("package-lock.json", Some(SkipReason::LockFile)),
            ("go.sum", Some(SkipReason::LockFile)),
            ("jquery.min.js", Some(SkipReason::Minified)),
            ("api.pb.go", Some(SkipReason::Generated)),
            ("msg_pb2.py", Some(SkipReason::Generated)),
            ("main.rs", None),
            ("keyboard.rs", None),
            ("environment.py", None),
        ];
        for (name, want) in cases {
            assert_eq!(skip_by_name(Path::new(name)), want, "{name}");
        }
    }

    #[test]
    fn vendored_dirs() {
        for name in ["node_modules", "target", "vendor", "dist", ".venv"] {
            assert!(is_vendored_dir(name), "{name}");
        }
        for name in ["src", "vendors_api", "targets", "lib"] {
            assert!(!is_vendored_dir(name), "{name}");
        }
    }

    #[test]
    fn content_table() {
        let long_line = format!("var a={};\n", "x".repeat(2000));
        let aws = "aws_key = \"AKIAIOSFODNN7EXAMPLE\"\n";
        let github = "let t = \"ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5\";\n";
        let generic = "const X: &str = \"Zx9Qm2Lr7Tp4Wv8Ks1Nd6Hb3Jf5Gc0Ya\";\n";
        let password = "db_password = \"hunter2hunter2x9q7z3k1\"\n";
        let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        let cases: Vec<(&[u8], Result<(), SkipReason>)> = vec![
            (b"fn main() {}\n", Ok(())),
            (b"", Err(SkipReason::Empty)),
            (b"  \n\t\n", Err(SkipReason::Empty)),
            (b"\x7fELF\x02\x01\x00\x00", Err(SkipReason::Binary)),
            (b"caf\xe9\n", Err(SkipReason::Binary)),
            (
                b"// @generated by build.rs\nfn a() {}\n",
                Err(SkipReason::Generated),
            ),
            (
                b"// Code generated by protoc-gen-go. DO NOT EDIT.\npackage x\n",
                Err(SkipReason::Generated),
            ),
            (long_line.as_bytes(), Err(SkipReason::Minified)),
            (private.as_bytes(), Err(SkipReason::PrivateKey)),
            (aws.as_bytes(), Err(SkipReason::ApiKey)),
            (github.as_bytes(), Err(SkipReason::ApiKey)),
            (generic.as_bytes(), Err(SkipReason::ApiKey)),
            (password.as_bytes(), Err(SkipReason::ApiKey)),
        ];
        for (bytes, want) in cases {
            let got = check_content(bytes, MAX_FILE_BYTES).map(|_| ());
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(
            check_content(&vec![b'a'; 2_000_001], MAX_FILE_BYTES),
            Err(SkipReason::TooLarge)
        );
    }

    #[test]
    fn ordinary_code_is_not_a_secret() {
        let code = [
            "fn handle_key_press(event: KeyboardEvent) -> Result<(), Error> {",
            "let token_stream = proc_macro2::TokenStream::new();",
            "use crate::model::tokenizer::byte_level_tokenizer;",
            "const SHA: &str = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\";",
            "let path = \"src/train/files/data/models/config2024.json\";",
            "self.password_hash = hash_password_with_argon2id(password)?;",
            "const TOKEN_LIMIT: usize = 4096; // max tokens per request",
            "let uuid = \"550e8400-e29b-41d4-a716-446655440000\";",
        ];
        for line in code {
            assert!(!contains_api_key(line), "{line}");
        }
    }

    #[test]
    fn entropy_values() {
        assert_eq!(shannon_entropy("aaaa"), 0.0);
        assert!((shannon_entropy("abcd") - 2.0).abs() < 1e-12);
    }
}
