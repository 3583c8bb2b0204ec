//! [`LongDouble`]: the numbers of Redis's `INCRBYFLOAT`, bit for bit.
//!
//! Redis parses the stored value and the increment with C's `strtold`, adds them in `long double`
//! and prints the sum with `%.17Lf`, trailing zeros trimmed. On x86-64 `long double` is the x87
//! 80-bit extended format (a 64-bit significand, exponents down to 2^-16445 with subnormals, up to
//! about 1.19e4932), so `0.1 + 0.2` prints `0.3`, `1e400` is a valid value, and `0x10` is 16. Doing
//! the same in `f64` answered `0.30000000000000004` and refused both.
//!
//! Written by hand because no crate does this: Rust has no `f80`; `rustc_apfloat` has the format
//! but not C's hex floats without an exponent, nor printing in fixed point to 17 places. And apply
//! must give the same bytes on every node and build, so no host floating point is used: each step
//! is done exactly with `num-bigint` and rounded once, to nearest with ties to even, as glibc does
//! (parse: the exact decimal or hex value to the nearest 80-bit number; add: the exact sum; print:
//! the exact binary value to 17 decimal places). The costs are a few big-integer operations on
//! numbers of at most 33,000 bits (the widest exponent span), microseconds for usual values.
//!
//! `long_double_tests.rs` checks this against a table produced by glibc itself (Redis's parse and
//! print functions compiled with gcc on x86-64).

use num_bigint::BigUint;
use num_traits::{One, Zero};
use serde::{Deserialize, Serialize};

/// The exponent of the last significand bit of the smallest numbers (subnormals).
const MIN_EXP: i64 = -16445;
/// The exponent of the last significand bit of the largest numbers.
const MAX_EXP: i64 = 16320;
/// Bits of the significand.
const SIGNIFICAND_BITS: u64 = 64;
/// Redis refuses numbers of this many characters or more (`MAX_LONG_DOUBLE_CHARS`).
pub const MAX_CHARS: usize = 5 * 1024;
/// Decimal places of Redis's `%.17Lf`.
const PLACES: u32 = 17;

/// A finite x87 extended-precision number: `(-1)^negative × significand × 2^exponent`.
///
/// Normal numbers have the top significand bit set; subnormals have the smallest exponent. Only
/// such values can be built or decoded (a log entry with any other is refused at decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawLongDouble", into = "RawLongDouble")]
pub struct LongDouble {
    negative: bool,
    significand: u64,
    exponent: i32,
}

/// [`LongDouble`] as encoded, checked on decode.
#[derive(Serialize, Deserialize)]
struct RawLongDouble {
    negative: bool,
    significand: u64,
    exponent: i32,
}

impl TryFrom<RawLongDouble> for LongDouble {
    type Error = &'static str;

    fn try_from(raw: RawLongDouble) -> Result<Self, Self::Error> {
        let exponent = i64::from(raw.exponent);
        let canonical = if raw.significand == 0 {
            raw.exponent == 0
        } else {
            (MIN_EXP..=MAX_EXP).contains(&exponent) && (raw.significand >> 63 == 1 || exponent == MIN_EXP)
        };
        if canonical {
            Ok(Self { negative: raw.negative, significand: raw.significand, exponent: raw.exponent })
        } else {
            Err("long double out of range")
        }
    }
}

impl From<LongDouble> for RawLongDouble {
    fn from(x: LongDouble) -> Self {
        Self { negative: x.negative, significand: x.significand, exponent: x.exponent }
    }
}

/// Why text is not a [`LongDouble`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseLongDoubleError {
    /// Not a number as Redis reads one (`ERR value is not a valid float`): empty, 5,120
    /// characters or more, leading space, trailing bytes, NaN, or out of range (overflow, or a
    /// non-zero value that rounds to zero).
    Invalid,
    /// `inf` or `infinity` (any case, any sign): Redis reads it, and then any sum is infinite
    /// or NaN (`ERR increment would produce NaN or Infinity`).
    Infinite,
}

enum Rounded {
    Finite(LongDouble),
    Overflow,
    Underflow,
}

impl LongDouble {
    /// Zero.
    pub const ZERO: Self = Self { negative: false, significand: 0, exponent: 0 };

    /// Reads `text` as Redis's `string2ld` does (`strtold` and its checks): decimal
    /// (`-1.5e3`, `.5`, `5.`) or C hex float (`0x10`, `0x1.8p1`), rounded to nearest.
    ///
    /// # Errors
    /// [`ParseLongDoubleError`].
    pub fn parse(text: &[u8]) -> Result<Self, ParseLongDoubleError> {
        use ParseLongDoubleError::{Infinite, Invalid};
        if text.is_empty() || text.len() >= MAX_CHARS {
            return Err(Invalid);
        }
        let (negative, body) = match text[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        if body.eq_ignore_ascii_case(b"inf") || body.eq_ignore_ascii_case(b"infinity") {
            return Err(Infinite);
        }
        let rounded = if body.len() > 2 && body[0] == b'0' && (body[1] | 0x20) == b'x' {
            parse_hex(negative, &body[2..])
        } else {
            parse_decimal(negative, body)
        };
        match rounded.ok_or(Invalid)? {
            Rounded::Finite(x) => Ok(x),
            Rounded::Overflow | Rounded::Underflow => Err(Invalid),
        }
    }

    /// The exact sum rounded to nearest; `None` when it overflows (Redis: NaN or infinity).
    pub fn checked_add(self, other: Self) -> Option<Self> {
        let (a, b) = (self, other);
        let low = i64::from(a.exponent.min(b.exponent));
        let wide = |x: Self| BigUint::from(x.significand) << (i64::from(x.exponent) - low) as u64;
        let (wa, wb) = (wide(a), wide(b));
        let (negative, sum) = if a.negative == b.negative {
            (a.negative, wa + wb)
        } else if wa >= wb {
            (a.negative && wa != wb, wa - wb)
        } else {
            (b.negative, wb - wa)
        };
        match round(negative, sum, &BigUint::one(), low) {
            Rounded::Finite(x) => Some(x),
            // An exact sum of two such numbers is a multiple of the smallest one: no underflow.
            Rounded::Overflow | Rounded::Underflow => None,
        }
    }

    /// Redis's text for the value: `%.17Lf` with trailing zeros and a trailing `.` removed, and
    /// `-0` written `0`.
    pub fn to_redis_string(&self) -> String {
        let scaled = BigUint::from(self.significand) * BigUint::from(10u32).pow(PLACES);
        let exponent = i64::from(self.exponent);
        let fixed = if exponent >= 0 {
            scaled << exponent as u64
        } else {
            drop_bits(&scaled, (-exponent) as u64, false).0
        };
        let digits = fixed.to_string();
        let digits = format!("{digits:0>width$}", width = PLACES as usize + 1);
        let (int, frac) = digits.split_at(digits.len() - PLACES as usize);
        let frac = frac.trim_end_matches('0');
        let mut out = String::with_capacity(digits.len() + 2);
        if self.negative {
            out.push('-');
        }
        out.push_str(int);
        if !frac.is_empty() {
            out.push('.');
            out.push_str(frac);
        }
        if out == "-0" {
            out.remove(0);
        }
        out
    }
}

/// `q >> n` rounded to nearest, ties to even, where `inexact` says the value had more bits
/// below `q` that are not all zero. Returns the result and whether anything was lost.
fn drop_bits(q: &BigUint, n: u64, inexact: bool) -> (BigUint, bool) {
    if n == 0 {
        return (q.clone(), inexact);
    }
    let kept = q >> n;
    let half = q.bit(n - 1);
    let below = inexact || q.trailing_zeros().is_some_and(|zeros| zeros < n - 1);
    let up = half && (below || kept.bit(0));
    let lost = half || below;
    (if up { kept + 1u32 } else { kept }, lost)
}

/// Rounds `±num / den × 2^scale` to the nearest [`LongDouble`], ties to even.
fn round(negative: bool, num: BigUint, den: &BigUint, scale: i64) -> Rounded {
    if num.is_zero() {
        return Rounded::Finite(LongDouble { negative, ..LongDouble::ZERO });
    }
    // A quotient of 66 or 67 bits: at least two bits below the 64 kept.
    let shift = num.bits() as i64 - den.bits() as i64 - (SIGNIFICAND_BITS as i64 + 2);
    let (q, inexact) = if shift >= 0 {
        let den = den << shift as u64;
        let q = &num / &den;
        let inexact = &q * &den != num;
        (q, inexact)
    } else {
        let num = num << (-shift) as u64;
        let q = &num / den;
        let inexact = &q * den != num;
        (q, inexact)
    };
    let q_bits = q.bits() as i64;
    let mut drop = q_bits - SIGNIFICAND_BITS as i64;
    let mut exponent = shift + scale + drop;
    if exponent < MIN_EXP {
        drop += MIN_EXP - exponent;
        exponent = MIN_EXP;
    }
    let (mut kept, _) = drop_bits(&q, drop as u64, inexact);
    if kept.bits() > SIGNIFICAND_BITS {
        kept >>= 1u32;
        exponent += 1;
    }
    if kept.is_zero() {
        return Rounded::Underflow;
    }
    if exponent > MAX_EXP {
        return Rounded::Overflow;
    }
    let significand = kept.iter_u64_digits().next().unwrap_or(0);
    Rounded::Finite(LongDouble { negative, significand, exponent: exponent as i32 })
}

/// Digits (with at most one `.`) and an optional exponent part: `(mantissa, digits after the
/// point, exponent)`, or `None` when `text` is not all of that.
fn split_number(text: &[u8], radix: u32, marker: u8) -> Option<(BigUint, i64, i64)> {
    let end = text.iter().position(|c| (c | 0x20) == marker).unwrap_or(text.len());
    let (mantissa, exponent) = text.split_at(end);
    let mut digits = Vec::with_capacity(mantissa.len());
    let mut after_point = None;
    for (i, &c) in mantissa.iter().enumerate() {
        if c == b'.' && after_point.is_none() {
            after_point = Some(mantissa.len() - i - 1);
        } else {
            digits.push(char::from(c).to_digit(radix)? as u8);
        }
    }
    if digits.is_empty() {
        return None;
    }
    let exponent = if exponent.is_empty() { 0 } else { parse_exponent(&exponent[1..])? };
    let mantissa = BigUint::from_radix_be(&digits, radix)?;
    Some((mantissa, after_point.unwrap_or(0) as i64, exponent))
}

/// A signed decimal exponent, saturated far past any value's range.
fn parse_exponent(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits.iter().fold(0i64, |acc, d| (acc * 10 + i64::from(d - b'0')).min(1 << 40));
    Some(if negative { -value } else { value })
}

fn parse_decimal(negative: bool, text: &[u8]) -> Option<Rounded> {
    let (mantissa, after_point, exponent) = split_number(text, 10, b'e')?;
    if mantissa.is_zero() {
        return Some(Rounded::Finite(LongDouble { negative, ..LongDouble::ZERO }));
    }
    let power = exponent - after_point;
    // The value lies in [10^(magnitude-1), 10^magnitude); the format spans about 10^-4951 to
    // 10^4932, so past these bounds the answer is known without computing 10^power.
    let magnitude = power + mantissa.to_string().len() as i64;
    if magnitude > 4940 {
        return Some(Rounded::Overflow);
    }
    if magnitude < -4960 {
        return Some(Rounded::Underflow);
    }
    let ten = BigUint::from(10u32);
    Some(if power >= 0 {
        round(negative, mantissa * ten.pow(power as u32), &BigUint::one(), 0)
    } else {
        round(negative, mantissa, &ten.pow((-power) as u32), 0)
    })
}

fn parse_hex(negative: bool, text: &[u8]) -> Option<Rounded> {
    let (mantissa, after_point, exponent) = split_number(text, 16, b'p')?;
    if mantissa.is_zero() {
        return Some(Rounded::Finite(LongDouble { negative, ..LongDouble::ZERO }));
    }
    let power = exponent - 4 * after_point;
    let magnitude = power + mantissa.bits() as i64;
    if magnitude > 16400 {
        return Some(Rounded::Overflow);
    }
    if magnitude < -16500 {
        return Some(Rounded::Underflow);
    }
    Some(round(negative, mantissa, &BigUint::one(), power))
}

#[cfg(test)]
#[path = "long_double_tests.rs"]
mod tests;
