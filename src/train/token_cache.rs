//! The tokenized-corpus cache on disk: each document's tokenization (`splice::DocTokens`) stored as
//! `<dir>/<tokenizer fingerprint>/<content hash>.tok`, so a document is tokenized once per
//! (content, tokenizer) and reused by every run and every resume, and a changed file invalidates
//! only its own entry. Entries are written to a temporary file and renamed into place; an entry
//! that does not read back (truncated, corrupt, another format) is tokenized again and rewritten,
//! with a warning on the log; temporary files a killed writer left are removed after ten minutes.
//! Also where the cache lives (`resolve_dir`). Not here: splicing FIM
//! pieces (`splice.rs`); no eviction (old file versions stay until the folder is deleted).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::corpus::{stable_hash, Document};
use super::splice::{DocTokens, Splicer};

/// Environment variable naming the cache folder (`off` disables the cache).
pub const CACHE_ENV: &str = "FORESIGHT_TOKEN_CACHE";
/// The file format; part of the tokenizer folder's name, so a new format starts a new folder.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 4] = b"FSTK";
const ENTRY_EXT: &str = "tok";
/// A temporary file older than this was left by a killed writer (a live one renames within
/// moments) and is removed.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(600);

/// Where the cache lives: `--no-token-cache` (or `FORESIGHT_TOKEN_CACHE=off`) disables it,
/// `--token-cache DIR` or `FORESIGHT_TOKEN_CACHE=DIR` names it, otherwise
/// `$XDG_CACHE_HOME/foresight/tokens` or `~/.cache/foresight/tokens`. `None`: no cache.
/// `env` reads an environment variable (a parameter so the decision is testable).
pub fn resolve_dir(
    flag: Option<&Path>,
    disabled: bool,
    env: impl Fn(&str) -> Option<OsString>,
) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if disabled {
        return None;
    }
    if let Some(dir) = flag {
        return Some(dir.to_path_buf());
    }
    if let Some(v) = set(CACHE_ENV) {
        return if v == "off" {
            None
        } else {
            Some(PathBuf::from(v))
        };
    }
    let xdg = set("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("foresight").join("tokens"))
}

/// A 128-bit hash of a document's bytes: the cache key. Two 64-bit lanes over 8-byte words
/// (fast: it runs over the whole corpus on every start), each finished with the MurmurHash3 mixer,
/// plus the length. Stable across runs and platforms; not a defence against crafted collisions.
pub fn content_key(bytes: &[u8]) -> u128 {
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
    const K3: u64 = 0x1656_67b1_9e37_79f9;
    let mut a = 0x243f_6a88_85a3_08d3 ^ (bytes.len() as u64).wrapping_mul(K1);
    let mut b = 0x1319_8a2e_0370_7344 ^ (bytes.len() as u64).wrapping_mul(K2);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        a = (a ^ w.wrapping_mul(K2).rotate_left(31))
            .wrapping_mul(K1)
            .rotate_left(27);
        b = (b ^ w.wrapping_mul(K3).rotate_left(29))
            .wrapping_mul(K2)
            .rotate_left(31);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    let w = u64::from_le_bytes(tail) ^ (chunks.remainder().len() as u64) << 59;
    a = (a ^ w.wrapping_mul(K2).rotate_left(31)).wrapping_mul(K1);
    b = (b ^ w.wrapping_mul(K3).rotate_left(29)).wrapping_mul(K2);
    (u128::from(fmix64(a ^ b.rotate_left(17))) << 64) | u128::from(fmix64(b ^ a.rotate_left(41)))
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Identifies a text tokenizer for the cache: its JSON, how it treats special-token names in text,
/// and the entry format. `None` when the tokenizer does not serialize.
pub fn tokenizer_fingerprint(tokenizer: &Tokenizer) -> Option<u64> {
    let json = tokenizer.to_string(false).ok()?;
    let tag = format!(
        "foresight token cache v{FORMAT_VERSION}; encode_special_tokens={}\n",
        tokenizer.get_encode_special_tokens()
    );
    Some(stable_hash(
        [tag.as_bytes(), json.as_bytes()].concat().as_slice(),
    ))
}

/// Cache activity of one run (or one split of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Documents read from the cache.
    pub hits: usize,
    /// Documents tokenized (not in the cache, or their entry was unreadable).
    pub misses: usize,
    /// Of the misses, entries that existed but did not read back (rewritten).
    pub rebuilt: usize,
    /// Entries that could not be written (the run goes on without them).
    pub write_failures: usize,
}

impl CacheStats {
    pub fn add(&mut self, other: CacheStats) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.rebuilt += other.rebuilt;
        self.write_failures += other.write_failures;
    }
}

impl std::fmt::Display for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} from the cache, {} tokenized", self.hits, self.misses)?;
        if self.rebuilt > 0 {
            write!(f, " ({} unreadable entries rebuilt)", self.rebuilt)?;
        }
        if self.write_failures > 0 {
            write!(f, ", {} entries not written", self.write_failures)?;
        }
        Ok(())
    }
}

/// The cache folder of one tokenizer.
#[derive(Debug, Clone)]
pub struct TokenCache {
    dir: PathBuf,
    fingerprint: u64,
}

impl TokenCache {
    /// The cache for `tokenizer` under `root`; `None` (with a warning) when the tokenizer has no
    /// fingerprint. The folder is created on the first write.
    pub fn new(root: &Path, tokenizer: &Tokenizer) -> Option<Self> {
        let Some(fingerprint) = tokenizer_fingerprint(tokenizer) else {
            tracing::warn!("the tokenizer does not serialize; tokenizing without the cache");
            return None;
        };
        Some(Self {
            dir: root.join(format!("{fingerprint:016x}")),
            fingerprint,
        })
    }

    /// The folder holding this tokenizer's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry file of a document with this content key.
    pub fn entry_path(&self, key: u128) -> PathBuf {
        self.dir.join(format!("{key:032x}.{ENTRY_EXT}"))
    }

    /// The tokenization of every document, in order: read from the cache where an entry reads
    /// back, otherwise tokenized by `splicer` and written. Documents are handled in parallel.
    pub fn tokenize_all(
        &self,
        docs: &[Document],
        splicer: &Splicer,
    ) -> (Vec<DocTokens>, CacheStats) {
        self.remove_stale_temporaries();
        let (hits, misses, rebuilt, write_failures) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let created = std::sync::OnceLock::new();
        let tokens = docs
            .par_iter()
            .map(|doc| {
                let key = content_key(doc.text.as_bytes());
                let path = self.entry_path(key);
                match std::fs::read(&path) {
                    Ok(bytes) => match decode_entry(&bytes, self.fingerprint, key, doc.text.len()) {
                        Ok(t) => {
                            hits.fetch_add(1, Ordering::Relaxed);
                            return t;
                        }
                        Err(reason) => {
                            tracing::warn!("token cache entry {} for {} is unreadable ({reason}); tokenizing the file again", path.display(), doc.path.display());
                            rebuilt.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!("cannot read token cache entry {}: {e}; tokenizing {} again", path.display(), doc.path.display());
                        rebuilt.fetch_add(1, Ordering::Relaxed);
                    }
                }
                misses.fetch_add(1, Ordering::Relaxed);
                let t = splicer.tokenize(&doc.text);
                let dir_ok = created.get_or_init(|| std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string()));
                let written = match dir_ok {
                    Ok(()) => write_atomic(&path, &encode_entry(self.fingerprint, key, doc.text.len(), &t)).map_err(|e| e.to_string()),
                    Err(e) => Err(e.clone()),
                };
                if let Err(e) = written {
                    if write_failures.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!("cannot write token cache entries under {} ({e}); this run goes on without them", self.dir.display());
                    }
                }
                t
            })
            .collect();
        let stats = CacheStats {
            hits: hits.into_inner(),
            misses: misses.into_inner(),
            rebuilt: rebuilt.into_inner(),
            write_failures: write_failures.into_inner(),
        };
        (tokens, stats)
    }
}

impl TokenCache {
    /// Removes temporary files that killed writers left behind (best effort).
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let temporary = name
                .to_str()
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"));
            let age = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok());
            if temporary && age.is_some_and(|a| a > STALE_TEMPORARY) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Writes `bytes` to a unique temporary file next to `path` and renames it over `path`, so a
/// reader sees the old entry, no entry, or the whole new one, even if this process is killed.
/// Not synced to disk: after a power loss an entry may read back short, which `decode_entry`
/// refuses and the next run rewrites.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The bytes of one entry: magic, format version, tokenizer fingerprint, content key, text length,
/// id count, word count, id width (2 or 4 bytes), the ids, the words as varint pairs (byte length,
/// token count), and a checksum of everything before it. Little-endian.
pub fn encode_entry(fingerprint: u64, key: u128, text_len: usize, t: &DocTokens) -> Vec<u8> {
    let wide = t.ids.iter().any(|&id| id > u32::from(u16::MAX));
    let mut out =
        Vec::with_capacity(64 + t.ids.len() * if wide { 4 } else { 2 } + t.word_ends.len() * 2);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(&key.to_le_bytes());
    for n in [text_len, t.ids.len(), t.word_ends.len()] {
        out.extend_from_slice(&(n as u64).to_le_bytes());
    }
    out.push(if wide { 4 } else { 2 });
    for &id in &t.ids {
        if wide {
            out.extend_from_slice(&id.to_le_bytes());
        } else {
            out.extend_from_slice(&(id as u16).to_le_bytes());
        }
    }
    let (mut prev_byte, mut prev_tok) = (0u32, 0u32);
    for (&e, &te) in t.word_ends.iter().zip(&t.word_token_ends) {
        put_varint(&mut out, u64::from(e - prev_byte));
        put_varint(&mut out, u64::from(te - prev_tok));
        (prev_byte, prev_tok) = (e, te);
    }
    let sum = content_key(&out) as u64;
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Reads an entry written by [`encode_entry`] for this tokenizer, document and text length, or
/// says why it cannot be used.
pub fn decode_entry(
    bytes: &[u8],
    fingerprint: u64,
    key: u128,
    text_len: usize,
) -> Result<DocTokens, String> {
    if bytes.len() < 8 + 4 {
        return Err("too short".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if content_key(body) as u64 != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader { bytes: body, at: 0 };
    if r.take(4)? != MAGIC {
        return Err("not a token cache entry".into());
    }
    let version = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        ));
    }
    if r.u64()? != fingerprint {
        return Err("written for another tokenizer".into());
    }
    if u128::from_le_bytes(r.take(16)?.try_into().expect("16 bytes")) != key {
        return Err("written for other content".into());
    }
    if r.u64()? != text_len as u64 {
        return Err("written for a text of another length".into());
    }
    let (n_ids, n_words) = (r.u64()? as usize, r.u64()? as usize);
    let width = r.take(1)?[0] as usize;
    if width != 2 && width != 4 {
        return Err(format!("id width {width}"));
    }
    let raw = r.take(n_ids.checked_mul(width).ok_or("id count overflows")?)?;
    let ids: Vec<u32> = if width == 2 {
        raw.chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    } else {
        raw.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    if n_words > body.len() {
        return Err("word count exceeds the entry".into());
    }
    let (mut word_ends, mut word_token_ends) =
        (Vec::with_capacity(n_words), Vec::with_capacity(n_words));
    let (mut byte, mut tok) = (0u64, 0u64);
    for _ in 0..n_words {
        byte += r.varint()?;
        tok += r.varint()?;
        if byte > u64::from(u32::MAX) || tok > u64::from(u32::MAX) {
            return Err("word offsets overflow".into());
        }
        word_ends.push(byte as u32);
        word_token_ends.push(tok as u32);
    }
    if r.at != body.len() {
        return Err("trailing bytes".into());
    }
    let t = DocTokens {
        ids,
        word_ends,
        word_token_ends,
    };
    if !t.is_consistent(text_len) {
        return Err("inconsistent word spans".into());
    }
    Ok(t)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("truncated")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("bad varint".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases: its row type is spelled out once
    fn resolve_dir_table() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let home: &[(&str, &str)] = &[("HOME", "/home/u")];
        let xdg: &[(&str, &str)] = &[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x/cache")];
        let rel_xdg: &[(&str, &str)] = &[("HOME", "/home/u"), ("XDG_CACHE_HOME", "rel")];
        let env_dir: &[(&str, &str)] = &[("HOME", "/home/u"), (CACHE_ENV, "/e/tok")];
        let env_off: &[(&str, &str)] = &[("HOME", "/home/u"), (CACHE_ENV, "off")];
        let empty_env: &[(&str, &str)] =
            &[("HOME", "/home/u"), (CACHE_ENV, ""), ("XDG_CACHE_HOME", "")];
        let nothing: &[(&str, &str)] = &[];
        let flag = Some(Path::new("/f"));
        let cases: Vec<(Option<&Path>, bool, &[(&str, &str)], Option<&str>)> = vec![
            (None, false, home, Some("/home/u/.cache/foresight/tokens")),
            (None, false, xdg, Some("/x/cache/foresight/tokens")),
            (
                None,
                false,
                rel_xdg,
                Some("/home/u/.cache/foresight/tokens"),
            ),
            (None, false, env_dir, Some("/e/tok")),
            (None, false, env_off, None),
            (
                None,
                false,
                empty_env,
                Some("/home/u/.cache/foresight/tokens"),
            ),
            (None, false, nothing, None),
            (flag, false, env_off, Some("/f")),
            (flag, true, home, None),
            (None, true, xdg, None),
        ];
        for (i, (flag, disabled, vars, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                resolve_dir(flag, disabled, env(vars)),
                want.map(PathBuf::from),
                "case {i}"
            );
        }
    }

    #[test]
    fn content_key_is_pinned_and_sensitive() {
        // Pinned: a change of these values orphans every cache entry (harmless, but deliberate only).
        assert_eq!(
            format!(
                "{:032x} {:032x}",
                content_key(b""),
                content_key(b"fn main() {}\n")
            ),
            "e337d9a5d739f869ba34695b0f24b926 3e12587b4a4ebb7e3cd1bdcef3de7d6b"
        );
        let keys: Vec<u128> = [
            "",
            "a",
            "b",
            "ab",
            "ba",
            "abcdefgh",
            "abcdefgi",
            "abcdefgh\0",
        ]
        .iter()
        .map(|s| content_key(s.as_bytes()))
        .collect();
        let distinct: std::collections::HashSet<u128> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:x?}");
        let long = "fn main() {}\n".repeat(1000);
        let mut flipped = long.clone().into_bytes();
        flipped[6000] ^= 1;
        assert_ne!(content_key(long.as_bytes()), content_key(&flipped));
    }

    fn sample(wide: bool) -> DocTokens {
        let big = if wide { 70_000 } else { 7 };
        DocTokens {
            ids: vec![5, big, 9, 300],
            word_ends: vec![3, 200, 201],
            word_token_ends: vec![1, 3, 4],
        }
    }

    #[test]
    fn entries_round_trip() {
        for wide in [false, true] {
            let t = sample(wide);
            let bytes = encode_entry(11, 22, 201, &t);
            assert_eq!(decode_entry(&bytes, 11, 22, 201).unwrap(), t);
        }
        let no_words = DocTokens {
            ids: vec![1, 2],
            ..Default::default()
        };
        assert_eq!(
            decode_entry(&encode_entry(1, 2, 10, &no_words), 1, 2, 10).unwrap(),
            no_words
        );
        let empty = DocTokens::default();
        assert_eq!(
            decode_entry(&encode_entry(1, 2, 0, &empty), 1, 2, 0).unwrap(),
            empty
        );
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let good = encode_entry(11, 22, 201, &sample(false));
        let mut flipped = good.clone();
        flipped[40] ^= 0x10;
        let mut wrong_magic = good.clone();
        wrong_magic[0] = b'X';
        let n = wrong_magic.len();
        let sum = content_key(&wrong_magic[..n - 8]) as u64;
        wrong_magic[n - 8..].copy_from_slice(&sum.to_le_bytes());
        let cases: Vec<(Vec<u8>, u64, u128, usize, &str)> = vec![
            (Vec::new(), 11, 22, 201, "too short"),
            (good[..good.len() - 3].to_vec(), 11, 22, 201, "checksum"),
            (good[..20].to_vec(), 11, 22, 201, "checksum"),
            (flipped, 11, 22, 201, "checksum"),
            (wrong_magic, 11, 22, 201, "not a token cache entry"),
            (good.clone(), 12, 22, 201, "another tokenizer"),
            (good.clone(), 11, 23, 201, "other content"),
            (good.clone(), 11, 22, 200, "another length"),
        ];
        for (bytes, fp, key, len, want) in cases {
            let err = decode_entry(&bytes, fp, key, len).unwrap_err();
            assert!(err.contains(want), "{err} vs {want}");
        }
    }
}
