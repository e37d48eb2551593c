//! Token shards: the on-disk form of a tokenized corpus, one file per shard.
//!
//! ```text
//! offset  bytes  field
//! 0       8      magic b"TSRSHARD"
//! 8       4      format version (u32 LE): 1, or 2 when a mask or rows follow
//! 12      4      token width in bytes (u32 LE): 2 = u16 tokens, 4 = u32 tokens
//! 16      8      token count (u64 LE), at least 1
//! 24      4      vocabulary size of the tokenizer (u32 LE); every token is below it
//! 28      4      v2: flags (u32 LE), bit 0 = a loss mask follows the tokens; v1: zero
//! 32      4      v2: row length (u32 LE): the shard is packed rows of this many tokens
//!                (0 = a plain token stream); v1: zero
//! 36      28     reserved, zero
//! 64      n*w    the tokens, little-endian, w = token width
//! 64+n*w  ⌈n/8⌉  v2 with bit 0: the loss mask, one bit per token (LSB first): 1 = the
//!                loss counts the token when it is a target
//! ```
//!
//! A shard without a mask and rows is written as version 1, byte for byte what earlier builds
//! wrote; version 1 shards load with every token counted.
//!
//! Tokens are stored as u16 when every token is below 65,536 (GPT-2's are), else as u32. A shard
//! is read whole with plain reads (no mmap); every way a file can be wrong has its own error
//! naming the file.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The first eight bytes of every shard.
pub const SHARD_MAGIC: [u8; 8] = *b"TSRSHARD";
/// The newest shard layout version this code reads and writes (version 1 is read too).
pub const SHARD_VERSION: u32 = 2;
/// Header flag: a loss mask follows the tokens.
const FLAG_MASK: u32 = 1;
/// Bytes before the first token.
pub const SHARD_HEADER_BYTES: usize = 64;

/// How wide each stored token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// Bytes per token, which is also the code stored in the header.
    pub fn width(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    fn from_code(code: u32) -> Option<TokenDtype> {
        match code {
            2 => Some(TokenDtype::U16),
            4 => Some(TokenDtype::U32),
            _ => None,
        }
    }

    /// The narrowest width that holds `max_token`.
    pub fn for_max_token(max_token: u32) -> TokenDtype {
        if max_token < 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("token shard {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a Tessera token shard (its first bytes are {found:?}, expected \"TSRSHARD\"); make shards with `tessera data prepare`"
    )]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error(
        "token shard {path} has format version {version}, this build reads versions 1 to {SHARD_VERSION}; re-run `tessera data prepare` with this build"
    )]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error(
        "token shard {path} declares token width {code}, which is neither 2 (u16) nor 4 (u32); the file is corrupt, re-run `tessera data prepare`"
    )]
    UnknownDtype { path: PathBuf, code: u32 },
    #[error(
        "token shard {path} is truncated: it is {actual_bytes} bytes, but its header promises {tokens} tokens ({expected_bytes} bytes); re-run `tessera data prepare`"
    )]
    Truncated {
        path: PathBuf,
        actual_bytes: u64,
        expected_bytes: u64,
        tokens: u64,
    },
    #[error(
        "token shard {path} is {actual_bytes} bytes, longer than the {expected_bytes} its header describes; the file is corrupt, re-run `tessera data prepare`"
    )]
    TrailingBytes {
        path: PathBuf,
        actual_bytes: u64,
        expected_bytes: u64,
    },
    #[error(
        "token shard {path} holds {tokens} tokens, not a whole number of its rows of {row_len}; the file is corrupt, re-run `tessera data prepare`"
    )]
    PartialRow {
        path: PathBuf,
        tokens: u64,
        row_len: u32,
    },
    #[error(
        "token shard {path}: the loss mask has {mask} entries for {tokens} tokens; this is a bug in the writer"
    )]
    MaskLength {
        path: PathBuf,
        mask: usize,
        tokens: usize,
    },
    #[error(
        "token shard {path} holds no tokens; drop it from the data set or re-run `tessera data prepare` on non-empty input"
    )]
    Empty { path: PathBuf },
    #[error(
        "token shard {path} declares a vocabulary of 0 tokens; the file is corrupt, re-run `tessera data prepare`"
    )]
    ZeroVocab { path: PathBuf },
    #[error(
        "token shard {path}: token {token} at position {position} is outside the vocabulary of {vocab_size}; the shard is corrupt or was written with a different tokenizer"
    )]
    TokenOutOfVocab {
        path: PathBuf,
        token: u32,
        position: u64,
        vocab_size: u32,
    },
}

impl ShardError {
    fn io(path: &Path, source: std::io::Error) -> ShardError {
        ShardError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A shard's tokens, kept at their stored width to halve memory for GPT-2 data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardTokens {
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl ShardTokens {
    pub fn len(&self) -> usize {
        match self {
            ShardTokens::U16(t) => t.len(),
            ShardTokens::U32(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> TokenDtype {
        match self {
            ShardTokens::U16(_) => TokenDtype::U16,
            ShardTokens::U32(_) => TokenDtype::U32,
        }
    }

    pub fn get(&self, index: usize) -> u32 {
        match self {
            ShardTokens::U16(t) => u32::from(t[index]),
            ShardTokens::U32(t) => t[index],
        }
    }

    /// Copies `out.len()` tokens starting at `start` into `out`, widened to u32.
    pub fn copy_to(&self, start: usize, out: &mut [u32]) {
        match self {
            ShardTokens::U16(t) => {
                let end = start + out.len();
                for (dst, src) in out.iter_mut().zip(&t[start..end]) {
                    *dst = u32::from(*src);
                }
            }
            ShardTokens::U32(t) => out.copy_from_slice(&t[start..start + out.len()]),
        }
    }

    /// Every token widened to u32.
    pub fn to_u32(&self) -> Vec<u32> {
        let mut all = vec![0; self.len()];
        self.copy_to(0, &mut all);
        all
    }

    fn max(&self) -> Option<(usize, u32)> {
        let mut best: Option<(usize, u32)> = None;
        for i in 0..self.len() {
            let t = self.get(i);
            if best.is_none_or(|(_, m)| t > m) {
                best = Some((i, t));
            }
        }
        best
    }
}

/// A shard read from disk and validated.
#[derive(Clone, Debug)]
pub struct Shard {
    pub path: PathBuf,
    pub vocab_size: u32,
    pub tokens: ShardTokens,
    /// The largest token id in the shard.
    pub max_token: u32,
    /// The loss mask, one bit per token (LSB first), when the shard has one; without one
    /// every token counts.
    pub mask: Option<Vec<u8>>,
    /// Tokens per packed row, or 0 for a plain token stream.
    pub row_len: u32,
}

impl Shard {
    /// Whether the loss counts token `index` as a target.
    pub fn counted(&self, index: usize) -> bool {
        self.mask
            .as_ref()
            .is_none_or(|bits| bits[index / 8] >> (index % 8) & 1 == 1)
    }
}

/// How a shard's tokens are laid out beyond the tokens themselves (version 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardLayout<'a> {
    /// One entry per token: whether the loss counts it as a target.
    pub mask: Option<&'a [bool]>,
    /// Tokens per packed row, 0 for a stream.
    pub row_len: u32,
}

/// What [`write_shard`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSummary {
    pub path: PathBuf,
    pub tokens: u64,
    pub dtype: TokenDtype,
    pub bytes: u64,
}

/// Writes `tokens` as a shard at `path`, u16 when every token is below 65,536. The file appears
/// under its name only once complete (written beside it, then renamed).
pub fn write_shard(
    path: &Path,
    tokens: &[u32],
    vocab_size: u32,
) -> Result<ShardSummary, ShardError> {
    write_shard_with(path, tokens, vocab_size, ShardLayout::default())
}

/// [`write_shard`] with a loss mask and/or packed rows (a version 2 shard when either is
/// there).
pub fn write_shard_with(
    path: &Path,
    tokens: &[u32],
    vocab_size: u32,
    layout: ShardLayout<'_>,
) -> Result<ShardSummary, ShardError> {
    if let Some(mask) = layout.mask
        && mask.len() != tokens.len()
    {
        return Err(ShardError::MaskLength {
            path: path.to_path_buf(),
            mask: mask.len(),
            tokens: tokens.len(),
        });
    }
    if layout.row_len > 0 && !(tokens.len() as u64).is_multiple_of(u64::from(layout.row_len)) {
        return Err(ShardError::PartialRow {
            path: path.to_path_buf(),
            tokens: tokens.len() as u64,
            row_len: layout.row_len,
        });
    }
    if tokens.is_empty() {
        return Err(ShardError::Empty {
            path: path.to_path_buf(),
        });
    }
    if vocab_size == 0 {
        return Err(ShardError::ZeroVocab {
            path: path.to_path_buf(),
        });
    }
    if let Some((position, &token)) = tokens.iter().enumerate().find(|(_, t)| **t >= vocab_size) {
        return Err(ShardError::TokenOutOfVocab {
            path: path.to_path_buf(),
            token,
            position: position as u64,
            vocab_size,
        });
    }
    let dtype = TokenDtype::for_max_token(tokens.iter().copied().max().unwrap_or(0));
    let mut header = [0u8; SHARD_HEADER_BYTES];
    header[0..8].copy_from_slice(&SHARD_MAGIC);
    let v2 = layout.mask.is_some() || layout.row_len > 0;
    let version: u32 = if v2 { SHARD_VERSION } else { 1 };
    header[8..12].copy_from_slice(&version.to_le_bytes());
    header[12..16].copy_from_slice(&(dtype.width() as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(tokens.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&vocab_size.to_le_bytes());
    let flags = if layout.mask.is_some() { FLAG_MASK } else { 0 };
    header[28..32].copy_from_slice(&flags.to_le_bytes());
    header[32..36].copy_from_slice(&layout.row_len.to_le_bytes());
    let mask_bytes = layout.mask.map(pack_bits);

    let staging = staging_path(path);
    let write = || -> std::io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&staging)?);
        out.write_all(&header)?;
        for chunk in tokens.chunks(1 << 16) {
            let mut bytes = Vec::with_capacity(chunk.len() * dtype.width());
            for &t in chunk {
                match dtype {
                    // U16 only when every token is below 65,536, so the narrowing is exact.
                    TokenDtype::U16 => bytes.extend_from_slice(&(t as u16).to_le_bytes()),
                    TokenDtype::U32 => bytes.extend_from_slice(&t.to_le_bytes()),
                }
            }
            out.write_all(&bytes)?;
        }
        if let Some(bits) = &mask_bytes {
            out.write_all(bits)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&staging, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        ShardError::io(path, e)
    })?;
    Ok(ShardSummary {
        path: path.to_path_buf(),
        tokens: tokens.len() as u64,
        dtype,
        bytes: (SHARD_HEADER_BYTES
            + tokens.len() * dtype.width()
            + mask_bytes.as_ref().map_or(0, Vec::len)) as u64,
    })
}

/// One bit per entry, LSB first.
fn pack_bits(mask: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; mask.len().div_ceil(8)];
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads and validates a whole shard.
pub fn read_shard(path: &Path) -> Result<Shard, ShardError> {
    let mut file = File::open(path).map_err(|e| ShardError::io(path, e))?;
    let actual_bytes = file.metadata().map_err(|e| ShardError::io(path, e))?.len();
    let mut header = [0u8; SHARD_HEADER_BYTES];
    let header_read = read_up_to(&mut file, &mut header).map_err(|e| ShardError::io(path, e))?;
    // A file too short for the magic is not a shard at all; one with the magic but a short
    // header is a truncated shard.
    if header_read < SHARD_MAGIC.len() || header[0..8] != SHARD_MAGIC {
        return Err(ShardError::BadMagic {
            path: path.to_path_buf(),
            found: header[..header_read.min(8)].to_vec(),
        });
    }
    if header_read < SHARD_HEADER_BYTES {
        return Err(ShardError::Truncated {
            path: path.to_path_buf(),
            actual_bytes,
            expected_bytes: SHARD_HEADER_BYTES as u64,
            tokens: 0,
        });
    }
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if !(1..=SHARD_VERSION).contains(&version) {
        return Err(ShardError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let code = word(12);
    let dtype = TokenDtype::from_code(code).ok_or_else(|| ShardError::UnknownDtype {
        path: path.to_path_buf(),
        code,
    })?;
    let tokens = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let vocab_size = word(24);
    let (has_mask, row_len) = if version >= 2 {
        (word(28) & FLAG_MASK != 0, word(32))
    } else {
        (false, 0)
    };
    if tokens == 0 {
        return Err(ShardError::Empty {
            path: path.to_path_buf(),
        });
    }
    if vocab_size == 0 {
        return Err(ShardError::ZeroVocab {
            path: path.to_path_buf(),
        });
    }
    if row_len > 0 && !tokens.is_multiple_of(u64::from(row_len)) {
        return Err(ShardError::PartialRow {
            path: path.to_path_buf(),
            tokens,
            row_len,
        });
    }
    let mask_len = if has_mask { tokens.div_ceil(8) } else { 0 };
    let expected_bytes = tokens
        .checked_mul(dtype.width() as u64)
        .and_then(|b| b.checked_add(SHARD_HEADER_BYTES as u64))
        .and_then(|b| b.checked_add(mask_len))
        .unwrap_or(u64::MAX);
    if actual_bytes < expected_bytes {
        return Err(ShardError::Truncated {
            path: path.to_path_buf(),
            actual_bytes,
            expected_bytes,
            tokens,
        });
    }
    if actual_bytes > expected_bytes {
        return Err(ShardError::TrailingBytes {
            path: path.to_path_buf(),
            actual_bytes,
            expected_bytes,
        });
    }
    let mut body = vec![0u8; (expected_bytes - SHARD_HEADER_BYTES as u64) as usize];
    let body_read = read_up_to(&mut file, &mut body).map_err(|e| ShardError::io(path, e))?;
    if body_read < body.len() {
        // The file shrank between the size check and the read.
        return Err(ShardError::Truncated {
            path: path.to_path_buf(),
            actual_bytes: (SHARD_HEADER_BYTES + body_read) as u64,
            expected_bytes,
            tokens,
        });
    }
    let mask = has_mask.then(|| body.split_off(body.len() - mask_len as usize));
    let tokens = match dtype {
        TokenDtype::U16 => ShardTokens::U16(
            body.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        TokenDtype::U32 => ShardTokens::U32(
            body.chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
    };
    let (position, max_token) = tokens.max().expect("shard checked non-empty");
    if max_token >= vocab_size {
        return Err(ShardError::TokenOutOfVocab {
            path: path.to_path_buf(),
            token: max_token,
            position: position as u64,
            vocab_size,
        });
    }
    Ok(Shard {
        path: path.to_path_buf(),
        vocab_size,
        tokens,
        max_token,
        mask,
        row_len,
    })
}

/// Fills as much of `buf` as the file has; returns how many bytes were read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_bytes(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn u16_shard_round_trips_and_is_two_bytes_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let tokens: Vec<u32> = (0..1000u32).map(|i| (i * 97) % 50_257).collect();
        let summary = write_shard(&path, &tokens, 50_257).unwrap();
        assert_eq!(summary.dtype, TokenDtype::U16);
        assert_eq!(summary.bytes, 64 + 2000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 + 2000);
        let shard = read_shard(&path).unwrap();
        assert_eq!(shard.tokens.dtype(), TokenDtype::U16);
        assert_eq!(shard.tokens.to_u32(), tokens);
        assert_eq!(shard.vocab_size, 50_257);
        assert_eq!(shard.max_token, *tokens.iter().max().unwrap());
        assert!(!dir.path().join("a.bin.tmp").exists());
    }

    #[test]
    fn a_masked_packed_shard_is_version_2_and_round_trips_its_mask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let tokens: Vec<u32> = (0..12).collect();
        let mask: Vec<bool> = (0..12).map(|i| i % 3 != 0).collect();
        let layout = ShardLayout {
            mask: Some(&mask),
            row_len: 4,
        };
        let summary = write_shard_with(&path, &tokens, 256, layout).unwrap();
        assert_eq!(summary.bytes, 64 + 24 + 2);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[8..12], 2u32.to_le_bytes());
        let shard = read_shard(&path).unwrap();
        assert_eq!(shard.row_len, 4);
        assert_eq!(shard.tokens.to_u32(), tokens);
        let back: Vec<bool> = (0..12).map(|i| shard.counted(i)).collect();
        assert_eq!(back, mask);
        // A plain shard stays version 1 and counts every token.
        write_shard(&path, &tokens, 256).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[8..12], 1u32.to_le_bytes());
        let plain = read_shard(&path).unwrap();
        assert!(plain.mask.is_none() && (0..12).all(|i| plain.counted(i)));
        // Rows must divide the tokens.
        let err = write_shard_with(
            &path,
            &tokens,
            256,
            ShardLayout {
                mask: None,
                row_len: 5,
            },
        );
        assert!(matches!(err, Err(ShardError::PartialRow { .. })));
    }

    #[test]
    fn u32_shard_round_trips_tokens_above_u16() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.bin");
        let tokens = vec![0, 65_535, 65_536, 99_999, 7];
        let summary = write_shard(&path, &tokens, 100_000).unwrap();
        assert_eq!(summary.dtype, TokenDtype::U32);
        let shard = read_shard(&path).unwrap();
        assert_eq!(shard.tokens.dtype(), TokenDtype::U32);
        assert_eq!(shard.tokens.to_u32(), tokens);
        assert_eq!(shard.max_token, 99_999);
        let bytes = shard_bytes(&path);
        assert_eq!(&bytes[0..8], b"TSRSHARD");
        assert_eq!(&bytes[64 + 8..64 + 12], &65_536u32.to_le_bytes());
    }

    #[test]
    fn writer_refuses_empty_and_out_of_vocab_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bin");
        assert!(matches!(
            write_shard(&path, &[], 256),
            Err(ShardError::Empty { .. })
        ));
        assert!(matches!(
            write_shard(&path, &[1, 256], 256),
            Err(ShardError::TokenOutOfVocab {
                token: 256,
                position: 1,
                ..
            })
        ));
        assert!(!path.exists());
    }

    fn corrupt(mutate: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.bin");
        write_shard(&path, &[1, 2, 3, 4], 256).unwrap();
        let mut bytes = shard_bytes(&path);
        mutate(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn wrong_magic_is_reported_with_the_file_name() {
        let (_dir, path) = corrupt(|b| b[0] = b'X');
        let err = read_shard(&path).unwrap_err();
        assert!(matches!(err, ShardError::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains("shard.bin"), "{err}");
    }

    #[test]
    fn a_text_file_is_not_a_shard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "hi").unwrap();
        assert!(matches!(
            read_shard(&path),
            Err(ShardError::BadMagic { .. })
        ));
    }

    #[test]
    fn unknown_version_is_reported() {
        let (_dir, path) = corrupt(|b| b[8..12].copy_from_slice(&9u32.to_le_bytes()));
        assert!(matches!(
            read_shard(&path),
            Err(ShardError::UnsupportedVersion { version: 9, .. })
        ));
    }

    #[test]
    fn unknown_dtype_is_reported() {
        let (_dir, path) = corrupt(|b| b[12..16].copy_from_slice(&3u32.to_le_bytes()));
        assert!(matches!(
            read_shard(&path),
            Err(ShardError::UnknownDtype { code: 3, .. })
        ));
    }

    #[test]
    fn truncated_body_is_reported_with_sizes() {
        let (_dir, path) = corrupt(|b| b.truncate(64 + 5));
        let err = read_shard(&path).unwrap_err();
        match &err {
            ShardError::Truncated {
                actual_bytes,
                expected_bytes,
                tokens,
                ..
            } => {
                assert_eq!((*actual_bytes, *expected_bytes, *tokens), (69, 72, 4));
            }
            other => panic!("expected Truncated, got {other}"),
        }
        assert!(err.to_string().contains("shard.bin"));
    }

    #[test]
    fn truncated_header_is_reported() {
        let (_dir, path) = corrupt(|b| b.truncate(20));
        assert!(matches!(
            read_shard(&path),
            Err(ShardError::Truncated { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let (_dir, path) = corrupt(|b| b.extend_from_slice(&[0, 0]));
        assert!(matches!(
            read_shard(&path),
            Err(ShardError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn zero_token_shard_is_reported_empty() {
        let (_dir, path) = corrupt(|b| {
            b[16..24].copy_from_slice(&0u64.to_le_bytes());
            b.truncate(64);
        });
        assert!(matches!(read_shard(&path), Err(ShardError::Empty { .. })));
    }

    #[test]
    fn token_beyond_declared_vocab_is_reported() {
        let (_dir, path) = corrupt(|b| b[24..28].copy_from_slice(&3u32.to_le_bytes()));
        assert!(matches!(
            read_shard(&path),
            Err(ShardError::TokenOutOfVocab {
                token: 4,
                position: 3,
                vocab_size: 3,
                ..
            })
        ));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = read_shard(Path::new("/nonexistent/x.bin")).unwrap_err();
        assert!(matches!(err, ShardError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/x.bin"));
    }
}
