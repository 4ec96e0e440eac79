//! Bounding foreign text before it goes into an error or a log line.
//!
//! Parser messages quote the row they choke on (arrow-csv puts the bad
//! value and the whole row in its message), endpoints answer with whole
//! error pages: text the worker does not control, of any size. Every place
//! where such text enters an error we build, or an error enters a log line,
//! passes it through [`excerpt`].

/// Foreign text quoted inside an error message (a parser's message, a
/// response body): enough to see what was wrong.
pub const ERROR_EXCERPT_BYTES: usize = 512;

/// An error's text in one log line.
pub const LOG_ERROR_BYTES: usize = 2048;

/// `text` cut to at most `max_bytes` bytes, on a char boundary, followed by
/// `…[N more bytes]` when anything was cut (N counts the bytes left out).
/// Text that fits is returned unchanged. The marker is added after the cut,
/// so the result is at most `max_bytes` plus about 25 bytes.
pub fn excerpt(text: &str, max_bytes: usize) -> String {
    excerpt_of(text, text.len(), max_bytes)
}

/// [`excerpt`] of `start`, the beginning of something `total_bytes` long
/// (a response body read only in part): the marker counts what was not
/// read too.
pub fn excerpt_of(start: &str, total_bytes: usize, max_bytes: usize) -> String {
    let total_bytes = total_bytes.max(start.len());
    if total_bytes <= max_bytes {
        return start.to_owned();
    }
    let kept = &start[..floor_char_boundary(start, max_bytes)];
    format!("{kept}…[{} more bytes]", total_bytes - kept.len())
}

/// The largest index `<= index` that is a char boundary of `text`.
pub fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    let mut end = index;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_unchanged() {
        assert_eq!(excerpt("bad row", 512), "bad row");
        assert_eq!(excerpt("", 0), "");
        assert_eq!(excerpt("abc", 3), "abc");
    }

    #[test]
    fn long_text_is_cut_and_says_how_much_is_missing() {
        let text = "x".repeat(300 * 1024);
        let cut = excerpt(&text, 512);
        assert!(cut.starts_with(&"x".repeat(512)), "{cut}");
        assert!(cut.ends_with(&format!("…[{} more bytes]", 300 * 1024 - 512)));
        assert!(cut.len() < 512 + 30, "{}", cut.len());
    }

    #[test]
    fn the_cut_falls_on_a_char_boundary() {
        // 'é' is two bytes: a cut at 5 would split the third one.
        let text = "éééééé";
        let cut = excerpt(text, 5);
        assert_eq!(cut, "éé…[8 more bytes]");
        // 4-byte chars, and a bound smaller than one char.
        assert_eq!(excerpt("🦀🦀", 3), "…[8 more bytes]");
    }

    #[test]
    fn a_partly_read_text_counts_what_was_not_read() {
        assert_eq!(excerpt_of("abcdef", 100, 4), "abcd…[96 more bytes]");
        assert_eq!(excerpt_of("abc", 3, 4), "abc");
        // A total below what was read is taken as what was read.
        assert_eq!(excerpt_of("abcdef", 0, 4), "abcd…[2 more bytes]");
    }
}
