//! Launchers of `kernels/embedding.cu`: token + position embedding (GPT-2) and token-only
//! embedding (the Llama family) forward, and the backwards, whose token-row sums need no
//! atomics because positions are bucketed by token on the host.

use super::{CudaBackend, CudaMut, CudaRef, CudaTokens, DType, blocks, int, launch, memory};
use crate::backend::BackendError;

/// The positions of each distinct token, as the CSR `encoder_backward_wte` walks: tokens in
/// ascending order, positions ascending within each.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct TokenBuckets {
    pub token: Vec<u32>,
    pub start: Vec<u32>,
    pub position: Vec<u32>,
}

pub(super) fn token_buckets(tokens: &[u32]) -> TokenBuckets {
    let mut position: Vec<u32> = (0..tokens.len() as u32).collect();
    // Stable: positions stay ascending within a token.
    position.sort_by_key(|&p| tokens[p as usize]);
    let mut token = Vec::new();
    let mut start = Vec::new();
    for (i, &p) in position.iter().enumerate() {
        let t = tokens[p as usize];
        if token.last() != Some(&t) {
            token.push(t);
            start.push(i as u32);
        }
    }
    start.push(position.len() as u32);
    TokenBuckets {
        token,
        start,
        position,
    }
}

impl CudaBackend {
    pub(super) fn encoder_forward_launch(
        &self,
        out: CudaMut<'_>,
        tokens: &CudaTokens,
        wte: CudaRef<'_>,
        wpe: CudaRef<'_>,
        batch: usize,
        seq_len: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "encoder_forward";
        let bt = batch * seq_len;
        let out = memory::exact(OP, "out", &out, DType::Bf16, bt * channels)?;
        check_tokens(OP, tokens, bt, wte.len / channels.max(1))?;
        let wte = memory::arg(OP, "wte", &wte, DType::Bf16, channels)?;
        let wpe = memory::arg(OP, "wpe", &wpe, DType::Bf16, seq_len * channels)?;
        let tok = tokens.addr;
        let (b, t, c) = (
            int(OP, "batch", batch)?,
            int(OP, "seq_len", seq_len)?,
            int(OP, "channels", channels)?,
        );
        let grid = (blocks(OP, bt * channels, 256)?, 1, 1);
        launch!(self, "encoder_forward", grid, 256, 0; out, tok, wte, wpe, b, t, c)
    }

    pub(super) fn encoder_backward_launch(
        &self,
        dwte: CudaMut<'_>,
        dwpe: CudaMut<'_>,
        dout: CudaRef<'_>,
        tokens: &CudaTokens,
        batch: usize,
        seq_len: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "encoder_backward";
        let bt = batch * seq_len;
        let vocab_rows = dwte.len / channels.max(1);
        check_tokens(OP, tokens, bt, vocab_rows)?;
        let dwte = memory::arg(OP, "dwte", &dwte, DType::Bf16, channels)?;
        let dwpe = memory::arg(OP, "dwpe", &dwpe, DType::Bf16, seq_len * channels)?;
        let dout = memory::exact(OP, "dout", &dout, DType::Bf16, bt * channels)?;
        let (b, t, c) = (
            int(OP, "batch", batch)?,
            int(OP, "seq_len", seq_len)?,
            int(OP, "channels", channels)?,
        );
        let grid = (blocks(OP, seq_len * channels, 256)?, 1, 1);
        launch!(self, "encoder_backward_wpe", grid, 256, 0; dwpe, dout, b, t, c)?;

        self.token_rows_backward(OP, dwte, dout, tokens, bt, c)
    }

    pub(super) fn embedding_forward_launch(
        &self,
        out: CudaMut<'_>,
        tokens: &CudaTokens,
        wte: CudaRef<'_>,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "embedding_forward";
        let out = memory::exact(OP, "out", &out, DType::Bf16, rows * channels)?;
        let vocab_rows = whole_rows(OP, "wte", wte.len, channels)?;
        // Any number of whole rows; the tokens are checked against them.
        let wte = memory::arg(OP, "wte", &wte, DType::Bf16, 0)?;
        check_tokens(OP, tokens, rows, vocab_rows)?;
        if rows == 0 {
            return Ok(());
        }
        let tok = tokens.addr;
        let (n, c) = (int(OP, "rows", rows)?, int(OP, "channels", channels)?);
        let grid = (blocks(OP, rows * channels, 256)?, 1, 1);
        launch!(self, "embedding_forward", grid, 256, 0; out, tok, wte, n, c)
    }

    pub(super) fn embedding_backward_launch(
        &self,
        dwte: CudaMut<'_>,
        dout: CudaRef<'_>,
        tokens: &CudaTokens,
        rows: usize,
        channels: usize,
    ) -> Result<(), BackendError> {
        const OP: &str = "embedding_backward";
        let dout = memory::exact(OP, "dout", &dout, DType::Bf16, rows * channels)?;
        let vocab_rows = whole_rows(OP, "dwte", dwte.len, channels)?;
        let dwte = memory::arg(OP, "dwte", &dwte, DType::Bf16, 0)?;
        check_tokens(OP, tokens, rows, vocab_rows)?;
        if rows == 0 {
            return Ok(());
        }
        let c = int(OP, "channels", channels)?;
        self.token_rows_backward(OP, dwte, dout, tokens, rows, c)
    }

    /// `dwte[tokens[p],:] += dout[p,:]` for the first `rows` positions p, through
    /// `encoder_backward_wte`: the host buckets the positions by token (ascending within each),
    /// one block row per distinct token sums its positions in that order. Tokens are checked.
    fn token_rows_backward(
        &self,
        op: &'static str,
        dwte: u64,
        dout: u64,
        tokens: &CudaTokens,
        rows: usize,
        c: i32,
    ) -> Result<(), BackendError> {
        let buckets = token_buckets(&tokens.host[..rows]);
        let distinct = buckets.token.len();
        let table = [buckets.token.as_slice(), &buckets.start, &buckets.position].concat();
        let (_guard, _, u32s) = self.scratch(0, table.len())?;
        self.copy_to_device(u32s, &table, op)?;
        let bucket_token = u32s;
        let bucket_start = u32s + 4 * distinct as u64;
        let bucket_position = bucket_start + 4 * (distinct as u64 + 1);
        let grid = (
            u32::try_from(distinct).map_err(|_| BackendError::BadDimensions {
                op,
                detail: format!("{distinct} distinct tokens"),
            })?,
            blocks(op, c as usize, 256)?,
            1,
        );
        launch!(self, "encoder_backward_wte", grid, 256, 0;
            dwte, dout, bucket_token, bucket_start, bucket_position, c)
    }
}

/// Rows of `channels` in a table of `len` elements: it must be whole rows, as on the CPU.
fn whole_rows(
    op: &'static str,
    name: &str,
    len: usize,
    channels: usize,
) -> Result<usize, BackendError> {
    if channels == 0 || !len.is_multiple_of(channels) {
        return Err(BackendError::BadDimensions {
            op,
            detail: format!("{name} ({len}) must be whole rows of {channels}"),
        });
    }
    Ok(len / channels)
}

/// Tokens must cover the batch and index rows that exist.
fn check_tokens(
    op: &'static str,
    tokens: &CudaTokens,
    bt: usize,
    rows: usize,
) -> Result<(), BackendError> {
    if tokens.host.len() < bt {
        return Err(BackendError::ShapeMismatch {
            op,
            name: "tokens",
            want: bt,
            got: tokens.host.len(),
        });
    }
    if let Some((position, &token)) = tokens.host[..bt]
        .iter()
        .enumerate()
        .find(|(_, t)| **t as usize >= rows)
    {
        return Err(BackendError::TokenOutOfRange {
            op,
            token,
            position,
            limit: rows,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_list_each_tokens_positions_in_order() {
        let b = token_buckets(&[5, 2, 5, 7, 2, 5]);
        assert_eq!(b.token, [2, 5, 7]);
        assert_eq!(b.start, [0, 2, 5, 6]);
        assert_eq!(b.position, [1, 4, 0, 2, 5, 3]);
        let empty = token_buckets(&[]);
        assert_eq!(empty.start, [0]);
    }

    #[test]
    fn tables_must_be_whole_rows() {
        assert_eq!(whole_rows("op", "wte", 12, 4), Ok(3));
        assert!(whole_rows("op", "wte", 13, 4).is_err());
        assert!(whole_rows("op", "wte", 12, 0).is_err());
    }
}
