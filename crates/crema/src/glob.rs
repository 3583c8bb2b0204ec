//! Redis's glob-style patterns for KEYS and SCAN MATCH: `*`, `?`, `[abc]`, `[^a]`, `[a-z]` and
//! `\x` escapes, over bytes. Written by hand because the glob crates on crates.io match file
//! paths (`/` is special, patterns are UTF-8) and Redis clients expect Redis's exact rules.

/// Whether `text` matches `pattern`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matching with one backtrack point for the last `*`: linear in practice and never
    // exponential, unlike the naive recursion (a pattern like `*a*a*a*b` cannot stall the node).
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    let (matched, next) = class_match(pattern, p, text[t]);
                    if matched {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == text[t] => {
                    p += 2;
                    t += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[at] == b'['`; answers whether it matched
/// and the position after the class. As Redis's `stringmatchlen` reads one: a `-` makes a range
/// of the bytes on either side even when the second is `]` (`[a-]` is the range `]`..`a`), and a
/// class left open takes the rest of the pattern (`a[bc` matches `ab`).
fn class_match(pattern: &[u8], at: usize, c: u8) -> (bool, usize) {
    let mut i = at + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let left = pattern.len().saturating_sub(i);
        if left == 0 {
            return (matched != negate, pattern.len());
        }
        if left >= 2 && pattern[i] == b'\\' {
            i += 1;
            matched |= pattern[i] == c;
        } else if pattern[i] == b']' {
            break;
        } else if left >= 3 && pattern[i + 1] == b'-' {
            let (lo, hi) = (pattern[i].min(pattern[i + 2]), pattern[i].max(pattern[i + 2]));
            matched |= (lo..=hi).contains(&c);
            i += 2;
        } else {
            matched |= pattern[i] == c;
        }
        i += 1;
    }
    (matched != negate, i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn redis_examples() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && !m("h?llo", "hllo"));
        assert!(m("h*llo", "hllo") && m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hello") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("*", "") && m("*", "anything") && m("user:*", "user:1") && !m("user:*", "usr:1"));
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaab") && !m("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaa"));
        // Redis's reading of odd classes (found different from outside).
        assert!(m("[abc", "a") && m("x[ab", "xb") && !m("x[ab", "xc"), "an open class takes the rest");
        assert!(m("[a-]", "_") && m("[a-]", "a") && !m("[a-]", "-"), "`a-]` is a range");
        assert!(m("[\\]]", "]") && !m("[\\]]", "\\"));
    }

    proptest! {
        #[test]
        fn never_panics(p in proptest::collection::vec(any::<u8>(), 0..20), t in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = glob_match(&p, &t);
        }

        #[test]
        fn a_literal_pattern_matches_itself(t in "[a-z0-9:]{0,20}") {
            prop_assert!(glob_match(t.as_bytes(), t.as_bytes()));
            let star = format!("{t}*");
            let text = format!("{t}suffix");
            prop_assert!(glob_match(star.as_bytes(), text.as_bytes()));
        }
    }
}
