//! `LCS key1 key2 [LEN] [IDX] [MINMATCHLEN n] [WITHMATCHLEN]`: the longest common subsequence
//! of two strings, as Redis 7 computes it (the same table, walked back the same way, so the
//! same subsequence and the same match ranges when there are several of equal length).
//!
//! Written here: it is a few lines of dynamic programming over Redis's own reply shapes, which
//! no crate produces. The table is `(len1 + 1) × (len2 + 1)` counters, so it is bounded
//! ([`MAX_TABLE_BYTES`]): Redis allocates it for any two strings (two 1 MB values would ask for
//! 4 TB), and crema refuses what it cannot hold instead of taking the node's memory.

use bytes::Bytes;

use super::CmdError;
use crate::resp::Reply;

/// The largest table one LCS may use (16 Mi cells of 4 bytes: two strings of 4,095 bytes each).
pub const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Tables up to this many cells (about 0.1 ms of work) are computed on the client's thread.
const IN_LINE_CELLS: u64 = 64 * 1024;

/// What LCS answers: the subsequence, its length, or the matching ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LcsQuery {
    /// `LEN`: the length alone.
    pub len: bool,
    /// `IDX`: the matching ranges and the length.
    pub idx: bool,
    /// `MINMATCHLEN`: ranges shorter than this are left out (0: none is).
    pub min_match_len: u64,
    /// `WITHMATCHLEN`: each range with its length.
    pub with_match_len: bool,
}

impl LcsQuery {
    /// Parses the options after the two keys.
    ///
    /// # Errors
    /// A syntax error, a MINMATCHLEN that is not an integer, or LEN with IDX, worded as Redis
    /// words them.
    pub fn parse(options: &[Bytes]) -> Result<Self, CmdError> {
        let mut query = Self { len: false, idx: false, min_match_len: 0, with_match_len: false };
        let mut i = 0;
        while i < options.len() {
            let option = String::from_utf8_lossy(&options[i]).to_ascii_uppercase();
            match option.as_str() {
                "LEN" => query.len = true,
                "IDX" => query.idx = true,
                "WITHMATCHLEN" => query.with_match_len = true,
                "MINMATCHLEN" if i + 1 < options.len() => {
                    // A negative length counts as none, as in Redis.
                    query.min_match_len = super::parse_int(&options[i + 1])?.max(0) as u64;
                    i += 1;
                }
                _ => return Err(CmdError::Syntax),
            }
            i += 1;
        }
        if query.len && query.idx {
            return Err(CmdError::Invalid(
                "If you want both the length and indexes, please just use IDX.".into(),
            ));
        }
        Ok(query)
    }

    /// [`Self::reply`], on a blocking thread when the table is large, one of the few the node's
    /// key walks share (`crema::cache::keyspace::off_runtime`). Found from outside: run on the
    /// client runtime, 50 clients asking LCS of two 4 KB strings (126 ms each) held every other
    /// client of the node 3.7 s per GET. EXEC answers its LCS steps through it too.
    ///
    /// # Errors
    /// As [`Self::reply`]; `Shutdown` if the node stops meanwhile.
    pub async fn answer(self, a: Bytes, b: Bytes) -> Result<Reply, CmdError> {
        let cells = (a.len() as u64 + 1).saturating_mul(b.len() as u64 + 1);
        if cells <= IN_LINE_CELLS {
            return self.reply(&a, &b);
        }
        crema::cache::keyspace::off_runtime(move || self.reply(&a, &b)).await?
    }

    /// The reply for strings `a` and `b` (a missing key is an empty string).
    ///
    /// # Errors
    /// The table would be over [`MAX_TABLE_BYTES`].
    pub fn reply(self, a: &[u8], b: &[u8]) -> Result<Reply, CmdError> {
        let cells = (a.len() as u64 + 1).saturating_mul(b.len() as u64 + 1);
        let bytes = cells.saturating_mul(4);
        if bytes > MAX_TABLE_BYTES {
            return Err(CmdError::Invalid(format!(
                "Insufficient memory, transient memory for LCS exceeds the limit of {MAX_TABLE_BYTES} bytes \
                 ({bytes} asked for strings of {} and {} bytes)",
                a.len(),
                b.len()
            )));
        }
        let table = Table::new(a, b);
        let len = table.at(a.len(), b.len());
        if self.len {
            return Ok(Reply::Integer(i64::from(len)));
        }
        let (common, ranges) = table.walk_back(a, b, len);
        if !self.idx {
            return Ok(Reply::Bulk(Bytes::from(common)));
        }
        let matches = ranges
            .into_iter()
            .filter(|r| self.min_match_len == 0 || r.len() >= self.min_match_len)
            .map(|r| {
                let pair = |start: usize, end: usize| {
                    Reply::Array(vec![Reply::Integer(start as i64), Reply::Integer(end as i64)])
                };
                let mut entry = vec![pair(r.a.0, r.a.1), pair(r.b.0, r.b.1)];
                if self.with_match_len {
                    entry.push(Reply::Integer(r.len() as i64));
                }
                Reply::Array(entry)
            })
            .collect();
        Ok(Reply::Map(vec![
            (Reply::bulk("matches"), Reply::Array(matches)),
            (Reply::bulk("len"), Reply::Integer(i64::from(len))),
        ]))
    }
}

/// One matching range: inclusive positions in each string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    a: (usize, usize),
    b: (usize, usize),
}

impl Range {
    fn len(&self) -> u64 {
        (self.a.1 - self.a.0 + 1) as u64
    }
}

/// `cell(i, j)`: the length of the longest common subsequence of `a[..i]` and `b[..j]`.
struct Table {
    width: usize,
    cells: Vec<u32>,
}

impl Table {
    fn new(a: &[u8], b: &[u8]) -> Self {
        let width = b.len() + 1;
        let mut cells = vec![0u32; (a.len() + 1) * width];
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                cells[i * width + j] = if a[i - 1] == b[j - 1] {
                    cells[(i - 1) * width + j - 1] + 1
                } else {
                    cells[(i - 1) * width + j].max(cells[i * width + j - 1])
                };
            }
        }
        Self { width, cells }
    }

    fn at(&self, i: usize, j: usize) -> u32 {
        self.cells[i * self.width + j]
    }

    /// The subsequence and its matching ranges, from the ends of both strings back, as Redis
    /// walks the table (the ranges come last first).
    fn walk_back(&self, a: &[u8], b: &[u8], len: u32) -> (Vec<u8>, Vec<Range>) {
        let mut common = vec![0u8; len as usize];
        let mut ranges = Vec::new();
        let (mut i, mut j, mut left) = (a.len(), b.len(), len as usize);
        let mut current: Option<Range> = None;
        while i > 0 && j > 0 {
            let mut emit = false;
            if a[i - 1] == b[j - 1] {
                common[left - 1] = a[i - 1];
                match current.as_mut() {
                    None => current = Some(Range { a: (i - 1, i - 1), b: (j - 1, j - 1) }),
                    // Contiguous with the range so far: it grows backwards.
                    Some(r) if r.a.0 == i && r.b.0 == j => {
                        r.a.0 -= 1;
                        r.b.0 -= 1;
                    }
                    Some(_) => emit = true,
                }
                if current.is_some_and(|r| r.a.0 == 0 || r.b.0 == 0) {
                    emit = true;
                }
                left -= 1;
                i -= 1;
                j -= 1;
            } else {
                if self.at(i - 1, j) > self.at(i, j - 1) {
                    i -= 1;
                } else {
                    j -= 1;
                }
                emit = current.is_some();
            }
            if emit {
                ranges.extend(current.take());
            }
        }
        (common, ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(options: &[&str]) -> LcsQuery {
        let options: Vec<Bytes> = options.iter().map(|o| Bytes::from(o.to_string())).collect();
        LcsQuery::parse(&options).unwrap()
    }

    fn ranges(reply: Reply) -> (Vec<Vec<i64>>, i64) {
        let Reply::Map(fields) = reply else { panic!("{reply:?}") };
        let flat = |r: &Reply| -> Vec<i64> {
            let Reply::Array(parts) = r else { panic!("{r:?}") };
            parts
                .iter()
                .flat_map(|p| match p {
                    Reply::Array(pair) => pair.clone(),
                    other => vec![other.clone()],
                })
                .map(|n| match n {
                    Reply::Integer(n) => n,
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let Reply::Array(matches) = &fields[0].1 else { panic!() };
        let Reply::Integer(len) = fields[1].1 else { panic!() };
        (matches.iter().map(flat).collect(), len)
    }

    /// The examples of Redis's LCS documentation, answer for answer.
    #[test]
    fn answers_as_redis_documents() {
        let (a, b) = (b"ohmytext".as_slice(), b"mynewtext".as_slice());
        assert_eq!(query(&[]).reply(a, b).unwrap(), Reply::Bulk(Bytes::from("mytext")));
        assert_eq!(query(&["LEN"]).reply(a, b).unwrap(), Reply::Integer(6));
        let (matches, len) = ranges(query(&["IDX"]).reply(a, b).unwrap());
        assert_eq!(matches, vec![vec![4, 7, 5, 8], vec![2, 3, 0, 1]]);
        assert_eq!(len, 6);
        let (matches, _) = ranges(query(&["IDX", "MINMATCHLEN", "4"]).reply(a, b).unwrap());
        assert_eq!(matches, vec![vec![4, 7, 5, 8]]);
        let (matches, _) = ranges(query(&["idx", "minmatchlen", "4", "withmatchlen"]).reply(a, b).unwrap());
        assert_eq!(matches, vec![vec![4, 7, 5, 8, 4]]);
    }

    #[test]
    fn missing_keys_are_empty_strings_and_options_are_checked() {
        assert_eq!(query(&[]).reply(b"", b"abc").unwrap(), Reply::Bulk(Bytes::new()));
        assert_eq!(query(&["LEN"]).reply(b"", b"").unwrap(), Reply::Integer(0));
        let (matches, len) = ranges(query(&["IDX"]).reply(b"abc", b"").unwrap());
        assert!(matches.is_empty() && len == 0);
        assert_eq!(query(&["MINMATCHLEN", "-5"]).min_match_len, 0);
        let parse =
            |o: &[&str]| LcsQuery::parse(&o.iter().map(|s| Bytes::from(s.to_string())).collect::<Vec<_>>());
        assert!(matches!(parse(&["LEN", "IDX"]), Err(CmdError::Invalid(m)) if m.contains("just use IDX")));
        assert!(matches!(parse(&["MINMATCHLEN"]), Err(CmdError::Syntax)));
        assert!(matches!(parse(&["FOO"]), Err(CmdError::Syntax)));
        assert!(matches!(parse(&["MINMATCHLEN", "x"]), Err(CmdError::NotInteger)));
    }

    /// Two strings whose table would be over the limit are refused, not computed.
    #[test]
    fn a_table_over_the_limit_is_refused() {
        let big = vec![b'x'; 8192];
        let refused = query(&["LEN"]).reply(&big, &big).unwrap_err();
        assert!(matches!(&refused, CmdError::Invalid(m) if m.contains("Insufficient memory")), "{refused:?}");
        assert_eq!(query(&["LEN"]).reply(&big[..4095], &big[..4095]).unwrap(), Reply::Integer(4095));
        assert!(query(&["LEN"]).reply(&big[..4096], &big[..4095]).is_err(), "one byte over");
    }
}
