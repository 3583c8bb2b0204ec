use proptest::prelude::*;

use super::*;

/// Rows of `current|increment|reply` made with `scripts/long_double_ref.c`: glibc's own
/// answers (Redis's `string2ld` and `ld2string`, compiled with gcc on x86-64).
const GLIBC_CASES: &str = include_str!("long_double_cases.txt");

/// What Redis's INCRBYFLOAT answers for `current` plus `increment`, in the table's words.
fn incr_by_float(current: &str, increment: &str) -> String {
    let (a, b) = (LongDouble::parse(current.as_bytes()), LongDouble::parse(increment.as_bytes()));
    let (a, b) = match (a, b) {
        (Err(ParseLongDoubleError::Invalid), _) | (_, Err(ParseLongDoubleError::Invalid)) => {
            return "ERR_NOT_FLOAT".into()
        }
        (Ok(a), Ok(b)) => (a, b),
        _ => return "ERR_NAN_INF".into(),
    };
    match a.checked_add(b) {
        Some(sum) => sum.to_redis_string(),
        None => "ERR_NAN_INF".into(),
    }
}

#[test]
fn answers_as_glibc_long_double_does() {
    let mut checked = 0;
    for line in GLIBC_CASES.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split('|');
        let (current, increment, expected) =
            (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
        assert_eq!(incr_by_float(current, increment), expected, "{current} + {increment}");
        checked += 1;
    }
    assert!(checked > 250, "the table has {checked} rows");
}

#[test]
fn the_examples_users_meet() {
    assert_eq!(incr_by_float("0.1", "0.2"), "0.3");
    assert_eq!(incr_by_float("10.50", "0.1"), "10.6");
    assert_eq!(incr_by_float("5.0e3", "2.0e2"), "5200");
    assert_eq!(incr_by_float("0x10", "1"), "17");
    assert!(incr_by_float("0", "1e400").starts_with("10000000000000000000281"));
}

#[test]
fn refuses_what_strtold_would_not_read_whole() {
    for text in [&b""[..], b" 1", b"1 ", b"\t1", b"1\x01", b"nan", b"-nan", b"0x", b"1e", b"--1", b"1..0"] {
        assert_eq!(LongDouble::parse(text), Err(ParseLongDoubleError::Invalid), "{text:?}");
    }
    assert_eq!(LongDouble::parse(&vec![b'1'; MAX_CHARS]), Err(ParseLongDoubleError::Invalid));
    assert!(LongDouble::parse(&vec![b'1'; MAX_CHARS - 1]).is_err(), "5,119 digits overflow");
    let long_zero = format!("0.{}1", "0".repeat(MAX_CHARS - 10));
    assert_eq!(LongDouble::parse(long_zero.as_bytes()), Err(ParseLongDoubleError::Invalid), "underflow");
    assert_eq!(LongDouble::parse(b"-Infinity"), Err(ParseLongDoubleError::Infinite));
}

#[test]
fn decoding_refuses_values_outside_the_format() {
    let encode = |negative, significand, exponent| {
        postcard::to_allocvec(&RawLongDouble { negative, significand, exponent }).unwrap()
    };
    let decode = |bytes: Vec<u8>| postcard::from_bytes::<LongDouble>(&bytes).is_ok();
    assert!(decode(encode(false, 1 << 63, 0)));
    assert!(decode(encode(true, 1, MIN_EXP as i32)), "the smallest subnormal");
    assert!(decode(encode(false, 0, 0)));
    assert!(!decode(encode(false, 1 << 63, MAX_EXP as i32 + 1)), "past the largest");
    assert!(!decode(encode(false, 1 << 63, i32::MIN)), "below the smallest");
    assert!(!decode(encode(false, 1, 0)), "not normalized");
    assert!(!decode(encode(false, 0, 7)), "a zero with an exponent");
}

/// `n / 2^s` written exactly in decimal, as Redis would print it.
fn exact(n: i64, s: u32) -> String {
    let scaled = i128::from(n).abs() * 5i128.pow(s);
    let unit = 10i128.pow(s);
    let mut text = if n < 0 { String::from("-") } else { String::new() };
    text.push_str(&(scaled / unit).to_string());
    let frac = format!("{:0width$}", scaled % unit, width = s as usize);
    let frac = frac.trim_end_matches('0');
    if !frac.is_empty() {
        text.push('.');
        text.push_str(frac);
    }
    text
}

proptest! {
    /// Binary fractions of under 64 significant bits add exactly, so the sum is known without
    /// glibc.
    #[test]
    fn exact_sums_of_binary_fractions(a in -(1i64 << 50)..(1i64 << 50), b in -(1i64 << 50)..(1i64 << 50), s in 0u32..12) {
        let parse = |n: i64| LongDouble::parse(exact(n, s).as_bytes()).unwrap();
        let sum = parse(a).checked_add(parse(b)).unwrap();
        prop_assert_eq!(sum.to_redis_string(), exact(a + b, s));
    }

    /// Whatever the text, parsing, adding and printing never panic.
    #[test]
    fn parse_never_panics(text in "[-+0-9a-fA-FxXpPeE.inf]{0,40}") {
        if let Ok(x) = LongDouble::parse(text.as_bytes()) {
            let _ = x.to_redis_string();
            let _ = x.checked_add(x);
        }
    }
}
