//! The training corpus of one or more repositories: the walk (the `ignore` crate, so .gitignore,
//! .ignore and hidden files are respected), the filters of `files.rs`, exact deduplication and the
//! deterministic train/validation split by a stable hash of each file's path. No tokens here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::{Result, TrainError};
use super::files::{check_content, is_vendored_dir, language_of, skip_by_name, SkipReason};

/// One kept source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Path relative to its repository root, with `/` separators: the split key.
    pub rel_path: String,
    pub path: PathBuf,
    pub language: &'static str,
    pub text: String,
}

/// What the walk kept and what it skipped, by reason.
#[derive(Debug, Default)]
pub struct Corpus {
    pub train: Vec<Document>,
    pub valid: Vec<Document>,
    pub skipped: BTreeMap<SkipReason, Vec<PathBuf>>,
}

impl Corpus {
    pub fn skipped_count(&self) -> usize {
        self.skipped.values().map(Vec::len).sum()
    }

    /// A fingerprint of the kept files (paths and contents, both splits), to tell whether a resumed
    /// run sees the same data.
    pub fn fingerprint(&self) -> u64 {
        let mut h = StableHasher::new();
        for doc in self.train.iter().chain(&self.valid) {
            h.write(doc.rel_path.as_bytes());
            h.write(&[0]);
            h.write(doc.text.as_bytes());
            h.write(&[0]);
        }
        h.finish()
    }

    /// Per-language counts of kept files, for the report.
    pub fn languages(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for doc in self.train.iter().chain(&self.valid) {
            *out.entry(doc.language).or_insert(0) += 1;
        }
        out
    }
}

/// 64-bit FNV-1a: stable across runs, platforms and Rust versions (unlike `DefaultHasher`).
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

impl StableHasher {
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for StableHasher {
    fn default() -> Self {
        Self::new()
    }
}

pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::new();
    h.write(bytes);
    h.finish()
}

/// Whether the file at `rel_path` belongs to the validation split: its hash falls in the first
/// `fraction` of the hash space. Depends on nothing but the path, so a file stays on its side
/// across runs and as the repository grows.
pub fn is_validation(rel_path: &str, fraction: f64) -> bool {
    let bucket = stable_hash(rel_path.as_bytes()) % 1_000_000;
    (bucket as f64) < fraction * 1_000_000.0
}

/// Options of the walk.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    pub max_file_bytes: u64,
    pub valid_fraction: f64,
}

/// Walks each repository and builds the corpus. Files are visited in path order, so duplicates
/// keep the first path and the result does not depend on the file system's order.
pub fn collect(repos: &[PathBuf], opts: &WalkOptions) -> Result<Corpus> {
    let mut corpus = Corpus::default();
    let mut kept: Vec<Document> = Vec::new();
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for repo in repos {
        if !repo.is_dir() {
            return Err(TrainError::NoRepository(repo.clone()));
        }
        let pruned: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        for entry in walk(repo, Arc::clone(&pruned)) {
            let entry = match entry {
                Ok(e) => e,
                Err(err) => {
                    tracing::warn!("walk {}: {err}", repo.display());
                    continue;
                }
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path().to_path_buf();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            let (language, text) = match read_source(&path, size, opts) {
                Ok(found) => found,
                Err(reason) => {
                    corpus.skipped.entry(reason).or_default().push(path);
                    continue;
                }
            };
            let same = by_hash.entry(stable_hash(text.as_bytes())).or_default();
            if same.iter().any(|&i| kept[i].text == text) {
                corpus
                    .skipped
                    .entry(SkipReason::Duplicate)
                    .or_default()
                    .push(path);
                continue;
            }
            same.push(kept.len());
            kept.push(Document {
                rel_path: relative_path(repo, &path),
                path,
                language,
                text,
            });
        }
        let pruned = std::mem::take(&mut *pruned.lock().expect("walk filter lock"));
        corpus
            .skipped
            .entry(SkipReason::Vendored)
            .or_default()
            .extend(pruned);
    }
    corpus.skipped.retain(|_, v| !v.is_empty());
    if kept.is_empty() {
        return Err(TrainError::EmptyCorpus {
            repos: repos.to_vec(),
            skipped: corpus.skipped_count(),
        });
    }
    if kept.len() < 2 {
        return Err(TrainError::TooFewFiles { found: kept.len() });
    }
    let (valid, train): (Vec<Document>, Vec<Document>) = kept
        .into_iter()
        .partition(|d| is_validation(&d.rel_path, opts.valid_fraction));
    corpus.train = train;
    corpus.valid = valid;
    balance_split(&mut corpus);
    Ok(corpus)
}

/// The files of `repo` in path order, honouring ignore files, without entering vendored or build
/// folders (which are recorded in `pruned`).
fn walk(repo: &Path, pruned: Arc<Mutex<Vec<PathBuf>>>) -> ignore::Walk {
    ignore::WalkBuilder::new(repo)
        .standard_filters(true)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_path(|a, b| a.cmp(b))
        .filter_entry(move |entry| {
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            let vendored = is_dir
                && entry.depth() > 0
                && entry.file_name().to_str().is_some_and(is_vendored_dir);
            if vendored {
                pruned
                    .lock()
                    .expect("walk filter lock")
                    .push(entry.path().to_path_buf());
            }
            !vendored
        })
        .build()
}

/// A file's language and text if it is usable source (`size` bytes on disk), else why not.
fn read_source(
    path: &Path,
    size: u64,
    opts: &WalkOptions,
) -> std::result::Result<(&'static str, String), SkipReason> {
    if let Some(reason) = skip_by_name(path) {
        return Err(reason);
    }
    let language = language_of(path).ok_or(SkipReason::NotSource)?;
    if size > opts.max_file_bytes {
        return Err(SkipReason::TooLarge);
    }
    let bytes = std::fs::read(path).map_err(|err| {
        tracing::warn!("cannot read {}: {err}", path.display());
        SkipReason::Unreadable
    })?;
    let text = check_content(&bytes, opts.max_file_bytes)?.to_string();
    Ok((language, text))
}

/// `path` relative to `repo`, with `/` separators (the split key).
fn relative_path(repo: &Path, path: &Path) -> String {
    path.strip_prefix(repo)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Makes both splits non-empty: when the hash split leaves one side empty, the file with the
/// smallest path hash moves over. Deterministic, like the split itself.
fn balance_split(corpus: &mut Corpus) {
    let smallest = |docs: &[Document]| {
        (0..docs.len()).min_by_key(|&i| {
            (
                stable_hash(docs[i].rel_path.as_bytes()),
                docs[i].rel_path.clone(),
            )
        })
    };
    if corpus.valid.is_empty() {
        if let Some(i) = smallest(&corpus.train) {
            let doc = corpus.train.remove(i);
            corpus.valid.push(doc);
        }
    } else if corpus.train.is_empty() {
        if let Some(i) = smallest(&corpus.valid) {
            let doc = corpus.valid.remove(i);
            corpus.train.push(doc);
        }
    }
}

/// Lines of the skip report: one per reason with its count, and with `verbose` every file.
pub fn skip_report(corpus: &Corpus, verbose: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for (reason, paths) in &corpus.skipped {
        lines.push(format!(
            "  skipped {:>6}  {}",
            paths.len(),
            reason.describe()
        ));
        if verbose {
            for p in paths {
                lines.push(format!("           {}", p.display()));
            }
        }
    }
    lines
}

/// Lines naming the kept files, for `--verbose`.
pub fn kept_report(corpus: &Corpus) -> Vec<String> {
    let mut lines = Vec::new();
    for (split, docs) in [("train", &corpus.train), ("valid", &corpus.valid)] {
        for d in docs {
            lines.push(format!(
                "  {split}  {:<10} {}",
                d.language,
                d.path.display()
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(stable_hash(b""), 0xcbf29ce484222325);
        assert_eq!(stable_hash(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn split_is_deterministic_and_roughly_proportional() {
        let paths: Vec<String> = (0..2000)
            .map(|i| format!("src/module_{i}/file.rs"))
            .collect();
        let valid: Vec<bool> = paths.iter().map(|p| is_validation(p, 0.1)).collect();
        let again: Vec<bool> = paths.iter().map(|p| is_validation(p, 0.1)).collect();
        assert_eq!(valid, again);
        let n = valid.iter().filter(|&&v| v).count();
        assert!((120..=280).contains(&n), "{n} of 2000 in validation at 10%");
        assert!(paths.iter().all(|p| !is_validation(p, 0.0)));
        assert!(paths.iter().all(|p| is_validation(p, 1.0)));
    }
}
