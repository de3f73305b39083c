//! From documents to fixed-length training sequences: per epoch, a seeded shuffle of the
//! documents, the FIM transform, encoding, concatenation with end-of-text separators, packing into
//! windows of `seq_len + 1` tokens (inputs plus the shifted targets) and a seeded shuffle of the
//! windows. Everything an epoch draws comes from `(seed, epoch)`, so a data position is just
//! `(epoch, index)` and a resumed run sees the same batches. Documents are encoded either piece by
//! piece with the tokenizer or, identically and much faster, from their cached tokenization
//! (`TokenSource`). No tensors here.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::corpus::Document;
use super::fim::{encode_pieces, encode_pieces_with, transform, FimRates, Framing, Piece};
use super::splice::{DocTokens, Splicer};

/// Where the ids of documents come from.
#[derive(Clone)]
pub enum TokenSource {
    /// Every piece of every sample encoded by this (text) tokenizer, every epoch. (Tokenizers are
    /// large: both variants box theirs.)
    Tokenizer(Box<Tokenizer>),
    /// Each document's tokenization, computed once (`token_cache`), in the order of the documents
    /// it is used with; FIM pieces are spliced from it (`splice`). Gives the same ids.
    Tokenized {
        splicer: Box<Splicer>,
        docs: Arc<[DocTokens]>,
    },
}

impl From<Tokenizer> for TokenSource {
    fn from(tokenizer: Tokenizer) -> Self {
        TokenSource::Tokenizer(Box::new(tokenizer))
    }
}

impl TokenSource {
    /// The ids of `pieces`, cut from `doc`, the `index`-th document.
    fn encode(
        &self,
        index: usize,
        doc: &Document,
        framing: &Framing,
        pieces: &[Piece],
    ) -> Vec<u32> {
        match self {
            TokenSource::Tokenizer(tokenizer) => encode_pieces(tokenizer, framing, pieces),
            TokenSource::Tokenized { splicer, docs } => {
                let tokens = &docs[index];
                encode_pieces_with(framing, pieces, |piece, range| {
                    let own_text =
                        std::ptr::eq(piece.as_ptr(), doc.text.as_ptr().wrapping_add(range.start))
                            && piece.len() == range.len();
                    if own_text && range.end <= doc.text.len() {
                        splicer.piece(&doc.text, tokens, range)
                    } else {
                        // A piece that is not the document's own text (the no-FIM-token fallback
                        // rebuilds the document): encode it as it is.
                        splicer.encode(piece)
                    }
                })
            }
        }
    }

    /// Checks that a tokenized source lines up with `n` documents.
    fn check_len(&self, n: usize) {
        if let TokenSource::Tokenized { docs, .. } = self {
            assert_eq!(docs.len(), n, "one tokenization per document");
        }
    }
}

/// The generator of epoch `epoch` of a run seeded with `seed`: one ChaCha stream per epoch.
pub fn epoch_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    rng
}

/// The stream reserved for the validation set (never an epoch number in practice).
pub const VALIDATION_STREAM: u64 = u64::MAX;

/// Encodes `docs` (in the given order) with the FIM transform drawn from `rng`, concatenated.
pub fn encode_documents(
    docs: &[&Document],
    tokenizer: &Tokenizer,
    framing: &Framing,
    rates: FimRates,
    rng: &mut ChaCha8Rng,
) -> Vec<u32> {
    let rates = if framing.fim.is_some() {
        rates
    } else {
        FimRates {
            fim_rate: 0.0,
            ..rates
        }
    };
    let mut stream = Vec::new();
    for doc in docs {
        let pieces = transform(&doc.text, rates, rng);
        stream.extend(encode_pieces(tokenizer, framing, &pieces));
    }
    stream
}

/// Encodes `docs[i]` for each `i` of `order`, with the FIM transform drawn from `rng`, concatenated.
pub fn encode_in_order(
    docs: &[Document],
    order: &[usize],
    source: &TokenSource,
    framing: &Framing,
    rates: FimRates,
    rng: &mut ChaCha8Rng,
) -> Vec<u32> {
    source.check_len(docs.len());
    let rates = if framing.fim.is_some() {
        rates
    } else {
        FimRates {
            fim_rate: 0.0,
            ..rates
        }
    };
    let mut stream = Vec::new();
    for &i in order {
        let doc = &docs[i];
        let pieces = transform(&doc.text, rates, rng);
        stream.extend(source.encode(i, doc, framing, &pieces));
    }
    stream
}

/// Cuts `stream` into windows of `window` tokens that overlap by one (a window's last token is the
/// next window's first input), dropping the incomplete tail.
pub fn pack(stream: &[u32], window: usize) -> Vec<Vec<u32>> {
    assert!(
        window >= 2,
        "a window holds at least one input and one target"
    );
    let stride = window - 1;
    let mut out = Vec::new();
    let mut start = 0;
    while start + window <= stream.len() {
        out.push(stream[start..start + window].to_vec());
        start += stride;
    }
    out
}

/// The windows of one training epoch, in the order they are used.
pub fn epoch_sequences(
    docs: &[Document],
    source: &TokenSource,
    framing: &Framing,
    rates: FimRates,
    seq_len: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<u32>> {
    let mut rng = epoch_rng(seed, epoch);
    // Shuffling indices draws exactly what shuffling the documents did (only the length matters).
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.shuffle(&mut rng);
    let stream = encode_in_order(docs, &order, source, framing, rates, &mut rng);
    let mut windows = pack(&stream, seq_len + 1);
    windows.shuffle(&mut rng);
    windows
}

/// Seed of the validation stream's FIM draws. Fixed, not the run's seed, so that runs with
/// different seeds (each leg of a training campaign) score the same windows and their validation
/// losses compare.
pub const VALIDATION_SEED: u64 = 0;

/// The validation windows: the documents in path order, the same FIM mix as training drawn from
/// the validation stream (seeded by [`VALIDATION_SEED`]), packed to `seq_len + 1`. When the whole
/// validation text is shorter than one window, it forms one shorter window.
pub fn validation_sequences(
    docs: &[Document],
    source: &TokenSource,
    framing: &Framing,
    rates: FimRates,
    seq_len: usize,
) -> Vec<Vec<u32>> {
    let mut rng = epoch_rng(VALIDATION_SEED, VALIDATION_STREAM);
    let order: Vec<usize> = (0..docs.len()).collect();
    let stream = encode_in_order(docs, &order, source, framing, rates, &mut rng);
    let windows = pack(&stream, seq_len + 1);
    if windows.is_empty() && stream.len() >= 2 {
        vec![stream]
    } else {
        windows
    }
}

/// Where the next batch comes from: epoch and the index of its first window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DataPosition {
    pub epoch: u64,
    pub index: usize,
}

/// Hands out batches of windows epoch after epoch, building each epoch when it starts.
pub struct BatchStream {
    docs: Vec<Document>,
    /// A text tokenizer (special-token names in text stay text, see `fim::text_tokenizer`), or
    /// the documents' tokenizations by it.
    source: TokenSource,
    framing: Framing,
    rates: FimRates,
    seq_len: usize,
    seed: u64,
    position: DataPosition,
    current: Vec<Vec<u32>>,
    built_epoch: Option<u64>,
}

impl BatchStream {
    pub fn new(
        docs: Vec<Document>,
        source: impl Into<TokenSource>,
        framing: Framing,
        rates: FimRates,
        seq_len: usize,
        seed: u64,
        position: DataPosition,
    ) -> Self {
        let source = source.into();
        source.check_len(docs.len());
        Self {
            docs,
            source,
            framing,
            rates,
            seq_len,
            seed,
            position,
            current: Vec::new(),
            built_epoch: None,
        }
    }

    /// The documents this stream draws from.
    pub fn docs(&self) -> &[Document] {
        &self.docs
    }

    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Windows in the current epoch (building it if needed).
    pub fn epoch_len(&mut self) -> usize {
        self.ensure_epoch();
        self.current.len()
    }

    fn ensure_epoch(&mut self) {
        if self.built_epoch != Some(self.position.epoch) {
            self.current = epoch_sequences(
                &self.docs,
                &self.source,
                &self.framing,
                self.rates,
                self.seq_len,
                self.seed,
                self.position.epoch,
            );
            self.built_epoch = Some(self.position.epoch);
        }
    }

    /// The next `batch_size` windows, crossing into the next epoch when this one runs out.
    /// Returns `None` only if an epoch has no window at all.
    pub fn next_batch(&mut self, batch_size: usize) -> Option<Vec<Vec<u32>>> {
        let mut batch = Vec::with_capacity(batch_size);
        while batch.len() < batch_size {
            self.ensure_epoch();
            if self.current.is_empty() {
                return None;
            }
            if self.position.index >= self.current.len() {
                self.position = DataPosition {
                    epoch: self.position.epoch + 1,
                    index: 0,
                };
                continue;
            }
            batch.push(self.current[self.position.index].clone());
            self.position.index += 1;
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::byte_level_tokenizer;
    use crate::model::FimTokens;
    use crate::train::fim::FimSpans;

    #[test]
    fn pack_overlaps_by_one_and_drops_the_tail() {
        let stream: Vec<u32> = (0..10).collect();
        assert_eq!(
            pack(&stream, 4),
            vec![vec![0, 1, 2, 3], vec![3, 4, 5, 6], vec![6, 7, 8, 9]]
        );
        assert_eq!(
            pack(&stream, 5),
            vec![vec![0, 1, 2, 3, 4], vec![4, 5, 6, 7, 8]]
        );
        assert!(pack(&stream, 11).is_empty());
    }

    fn docs() -> Vec<Document> {
        (0..6)
            .map(|i| Document {
                rel_path: format!("f{i}.rs"),
                path: format!("f{i}.rs").into(),
                language: "rust",
                text: format!("fn f{i}() -> u32 {{ {i} }}\n").repeat(3),
            })
            .collect()
    }

    /// Byte-level ids with end-of-text 256 and the FIM tokens 257-259.
    fn fim_framing() -> Framing {
        Framing {
            bos: None,
            end_of_text: 256,
            fim: Some(FimTokens {
                prefix: 257,
                suffix: 258,
                middle: 259,
            }),
        }
    }

    /// Half the documents in a FIM frame, half of those SPM, random spans.
    fn half_random() -> FimRates {
        FimRates {
            fim_rate: 0.5,
            spm_rate: 0.5,
            spans: FimSpans::Random,
        }
    }

    #[test]
    fn epochs_are_reproducible_and_differ_from_each_other() {
        let tok = byte_level_tokenizer();
        let (framing, rates) = (fim_framing(), half_random());
        let docs = docs();
        let src = TokenSource::from(tok.clone());
        let a = epoch_sequences(&docs, &src, &framing, rates, 16, 3, 0);
        let b = epoch_sequences(&docs, &src, &framing, rates, 16, 3, 0);
        let c = epoch_sequences(&docs, &src, &framing, rates, 16, 3, 1);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|w| w.len() == 17));
        // Every document ends with end-of-text: one separator per document in the packed stream.
        let stream = encode_documents(
            &docs.iter().collect::<Vec<_>>(),
            &tok,
            &framing,
            rates,
            &mut epoch_rng(3, 0),
        );
        assert_eq!(stream.iter().filter(|&&t| t == 256).count(), docs.len());
    }

    /// Random spans must draw and encode exactly as they did before `Lines` spans existed (and
    /// before documents became lists of pieces): a resumed run has to see the same batches. The
    /// figures were recorded when the old code's and the new code's first training steps on the
    /// campaign's corpus were checked to give identical losses.
    #[test]
    fn random_spans_give_the_stream_they_always_gave() {
        let (framing, rates) = (fim_framing(), half_random());
        let docs = docs();
        let stream = encode_documents(
            &docs.iter().collect::<Vec<_>>(),
            &byte_level_tokenizer(),
            &framing,
            rates,
            &mut epoch_rng(3, 0),
        );
        let fnv = stream.iter().fold(0xcbf29ce484222325u64, |h, &t| {
            (h ^ u64::from(t)).wrapping_mul(0x100000001b3)
        });
        assert_eq!((stream.len(), fnv), (393, 5452966645566052339));
    }

    #[test]
    fn a_tokenized_source_gives_the_tokenizers_windows() {
        let mut docs = docs();
        for (i, d) in docs.iter_mut().enumerate() {
            d.text.push_str(&format!(
                "  it's   héllo 🦀 {i}\n\n\t  <fim_middle>  '''  \r\n"
            ));
        }
        let corpus: String = docs.iter().map(|d| d.text.as_str()).collect();
        let trained = crate::train::bpe::train_bpe([corpus.as_str()].into_iter(), 320).unwrap();
        for tok in [byte_level_tokenizer(), trained] {
            let tok = crate::train::fim::text_tokenizer(&tok);
            let splicer = Splicer::new(&tok);
            assert!(splicer.splices());
            let tokenized = TokenSource::Tokenized {
                splicer: Box::new(splicer.clone()),
                docs: docs.iter().map(|d| splicer.tokenize(&d.text)).collect(),
            };
            let direct = TokenSource::from(tok.clone());
            let fim = fim_framing().fim;
            for (framing, rate) in [
                (
                    Framing {
                        bos: None,
                        end_of_text: 256,
                        fim,
                    },
                    0.9,
                ),
                (
                    Framing {
                        bos: Some(1),
                        end_of_text: 256,
                        fim: None,
                    },
                    0.5,
                ),
            ] {
                for spans in [FimSpans::Random, FimSpans::Lines] {
                    let rates = FimRates {
                        fim_rate: rate,
                        spm_rate: 0.5,
                        spans,
                    };
                    for epoch in 0..8 {
                        let a = epoch_sequences(&docs, &tokenized, &framing, rates, 16, 3, epoch);
                        assert_eq!(
                            a,
                            epoch_sequences(&docs, &direct, &framing, rates, 16, 3, epoch),
                            "epoch {epoch}"
                        );
                    }
                    assert_eq!(
                        validation_sequences(&docs, &tokenized, &framing, rates, 16),
                        validation_sequences(&docs, &direct, &framing, rates, 16)
                    );
                }
            }
        }
    }

    #[test]
    fn a_stream_resumed_at_its_position_continues_identically() {
        let tok = byte_level_tokenizer();
        let framing = Framing {
            bos: None,
            end_of_text: 256,
            fim: None,
        };
        let rates = FimRates {
            fim_rate: 0.0,
            spm_rate: 0.0,
            spans: FimSpans::Random,
        };
        let docs = docs();
        let mut whole = BatchStream::new(
            docs.clone(),
            tok.clone(),
            framing,
            rates,
            32,
            9,
            DataPosition::default(),
        );
        let n = whole.epoch_len();
        let mut batches = Vec::new();
        let mut positions = Vec::new();
        for _ in 0..(n + 3) {
            positions.push(whole.position());
            batches.push(whole.next_batch(2).unwrap());
        }
        assert!(
            positions.last().unwrap().epoch >= 1,
            "the stream crossed an epoch"
        );
        for k in [1, n / 2, n + 1] {
            let mut resumed = BatchStream::new(
                docs.clone(),
                tok.clone(),
                framing,
                rates,
                32,
                9,
                positions[k],
            );
            for want in &batches[k..] {
                assert_eq!(&resumed.next_batch(2).unwrap(), want);
            }
        }
    }
}
