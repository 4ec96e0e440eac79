//! Finds a quoted CSV field that is never closed, and where the record
//! being read began.
//!
//! csv-core, under arrow-csv, reads an opening quote that is never closed
//! as one field running to the end of the file: a truncated or corrupt
//! file would land as a single odd row. This tracker follows the same
//! quoting rules over the bytes the decoder consumed, so that at the end
//! of the file the decoder can tell whether it is still inside quotes and
//! call the file poison instead. It also knows where the record being read
//! began (just after the last line end outside quotes), so the decoder can
//! stop a record that never ends while streaming, not when memory runs out.
//!
//! The rules it mirrors (csv-core's, with doubled quotes on): a quote opens
//! a quoted field only at the start of a field; inside one, a doubled
//! quote is a literal quote and the escape character (if any) takes the
//! next byte literally; a quote inside an unquoted field is an ordinary
//! byte; comment lines are skipped whole.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    StartRecord,
    StartField,
    InField,
    InQuotedField,
    /// Just after the escape character inside a quoted field.
    EscapedInQuotedField,
    /// Just after a quote inside a quoted field: the end, or a doubled quote.
    QuoteInQuotedField,
    InComment,
}

pub struct QuoteTracker {
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    comment: Option<u8>,
    state: State,
    /// Bytes seen so far.
    offset: u64,
    /// Where the quoted field that is open now began.
    opened_at: u64,
    /// Where the record being read began: just after the last line end
    /// outside quotes (blank and comment lines end there too).
    record_start: u64,
}

impl QuoteTracker {
    pub fn new(delimiter: u8, quote: u8, escape: Option<u8>, comment: Option<u8>) -> Self {
        QuoteTracker {
            delimiter,
            quote,
            escape,
            comment,
            state: State::StartRecord,
            offset: 0,
            opened_at: 0,
            record_start: 0,
        }
    }

    /// Follows `bytes`, the next bytes of the (decompressed) file.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut index = 0;
        while index < bytes.len() {
            let rest = &bytes[index..];
            // Fast paths: skip to the next byte that can change the state.
            match self.state {
                // Inside a quoted field only the quote and escape bytes matter.
                State::InQuotedField => {
                    let found = match self.escape {
                        Some(escape) => memchr::memchr2(self.quote, escape, rest),
                        None => memchr::memchr(self.quote, rest),
                    };
                    match found {
                        Some(skip) => index += skip,
                        None => break,
                    }
                }
                // Outside quotes, without comment lines, only a quote can
                // open a quoted field, and whether it does depends only on
                // the byte before it (a delimiter or a line end starts a
                // field): jump from quote to quote. This is most of a
                // file, so it must cost about as little as `memchr`.
                State::StartRecord | State::StartField | State::InField
                    if self.comment.is_none() =>
                {
                    match memchr::memchr(self.quote, rest) {
                        Some(0) => {}
                        Some(skip) => {
                            self.note_last_line_end(&rest[..skip], self.offset + index as u64);
                            self.state = self.unquoted_state_after(rest[skip - 1]);
                            index += skip;
                        }
                        None => {
                            self.note_last_line_end(rest, self.offset + index as u64);
                            self.state = self.unquoted_state_after(rest[rest.len() - 1]);
                            break;
                        }
                    }
                }
                // With comment lines, follow field and line boundaries.
                State::InField => match memchr::memchr3(self.delimiter, b'\n', b'\r', rest) {
                    Some(skip) => index += skip,
                    None => break,
                },
                State::InComment => match memchr::memchr(b'\n', rest) {
                    Some(skip) => index += skip,
                    None => break,
                },
                _ => {}
            }
            self.step(bytes[index], self.offset + index as u64);
            index += 1;
        }
        self.offset += bytes.len() as u64;
    }

    /// Outside quotes, every line end in `span` (starting at file offset
    /// `span_start`) ends a record: only the last one matters. Searching
    /// from the end costs about one record, not the span.
    fn note_last_line_end(&mut self, span: &[u8], span_start: u64) {
        if let Some(at) = memchr::memrchr2(b'\n', b'\r', span) {
            self.record_start = span_start + at as u64 + 1;
        }
    }

    /// The state outside quotes after `byte` (no comment lines).
    fn unquoted_state_after(&self, byte: u8) -> State {
        if byte == self.delimiter {
            State::StartField
        } else if byte == b'\n' || byte == b'\r' {
            State::StartRecord
        } else {
            State::InField
        }
    }

    /// `feed` without the fast paths: the reference the tests compare with.
    #[cfg(test)]
    fn feed_bytewise(&mut self, bytes: &[u8]) {
        for (index, byte) in bytes.iter().enumerate() {
            self.step(*byte, self.offset + index as u64);
        }
        self.offset += bytes.len() as u64;
    }

    fn step(&mut self, byte: u8, at: u64) {
        let line_end = byte == b'\n' || byte == b'\r';
        self.state = match self.state {
            State::StartRecord if Some(byte) == self.comment => State::InComment,
            State::StartRecord | State::StartField => {
                if byte == self.quote {
                    self.opened_at = at;
                    State::InQuotedField
                } else if byte == self.delimiter {
                    State::StartField
                } else if line_end {
                    State::StartRecord
                } else {
                    State::InField
                }
            }
            State::InField if byte == self.delimiter => State::StartField,
            State::InField if line_end => State::StartRecord,
            State::InField => State::InField,
            State::InQuotedField if byte == self.quote => State::QuoteInQuotedField,
            State::InQuotedField if Some(byte) == self.escape => State::EscapedInQuotedField,
            State::InQuotedField | State::EscapedInQuotedField => State::InQuotedField,
            State::QuoteInQuotedField if byte == self.quote => State::InQuotedField,
            State::QuoteInQuotedField if byte == self.delimiter => State::StartField,
            State::QuoteInQuotedField if line_end => State::StartRecord,
            // csv-core reads `"x"y` as `xy`: the rest is unquoted.
            State::QuoteInQuotedField => State::InField,
            State::InComment if byte == b'\n' => State::StartRecord,
            State::InComment => State::InComment,
        };
        // Only a line end outside quotes leads to `StartRecord`.
        if self.state == State::StartRecord {
            self.record_start = at + 1;
        }
    }

    /// The offset where the record being read began.
    pub fn record_start(&self) -> u64 {
        self.record_start
    }

    /// Bytes of the record being read so far: what the decoder holds for a
    /// record it has not finished.
    pub fn open_record_bytes(&self) -> u64 {
        self.offset - self.record_start
    }

    /// At the end of the file: the byte offset of a quote that opened a
    /// field and was never closed.
    pub fn unterminated_quote(&self) -> Option<u64> {
        matches!(
            self.state,
            State::InQuotedField | State::EscapedInQuotedField
        )
        .then_some(self.opened_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_quote(data: &[u8], escape: Option<u8>, comment: Option<u8>) -> Option<u64> {
        // Fed in every split, so state carries across chunk boundaries.
        let whole = {
            let mut tracker = QuoteTracker::new(b',', b'"', escape, comment);
            tracker.feed(data);
            tracker.unterminated_quote()
        };
        for split in 0..=data.len() {
            let mut tracker = QuoteTracker::new(b',', b'"', escape, comment);
            tracker.feed(&data[..split]);
            tracker.feed(&data[split..]);
            assert_eq!(tracker.unterminated_quote(), whole, "split at {split}");
        }
        whole
    }

    #[test]
    fn closed_quotes_doubled_quotes_and_quoted_newlines_are_fine() {
        assert_eq!(open_quote(b"a,b\n\"x\",\"y\"\"z\"\n", None, None), None);
        assert_eq!(
            open_quote(b"a,b\r\n\"multi\nline\",2\r\n", None, None),
            None
        );
        assert_eq!(open_quote(b"a\n\"\"\n", None, None), None);
    }

    #[test]
    fn quotes_inside_unquoted_fields_are_ordinary_bytes() {
        assert_eq!(open_quote(b"size\n5\" screen\n", None, None), None);
        assert_eq!(open_quote(b"a\n\"x\"y\n", None, None), None);
    }

    #[test]
    fn a_quote_never_closed_is_found_with_its_offset() {
        assert_eq!(
            open_quote(b"a,b\n1,\"never closed\n2,3\n", None, None),
            Some(6)
        );
        assert_eq!(open_quote(b"a\n\"x\"\"\n", None, None), Some(2));
    }

    #[test]
    fn escapes_and_comments_follow_the_configuration() {
        assert_eq!(open_quote(b"a\n\"x\\\"y\"\n", Some(b'\\'), None), None);
        assert_eq!(open_quote(b"a\n\"x\\\"y\n", Some(b'\\'), None), Some(2));
        assert_eq!(open_quote(b"a\n#,\"x\n1\n", None, Some(b'#')), None);
        assert_eq!(open_quote(b"a\n#,\"x\n1\n", None, None), Some(4));
    }

    #[test]
    fn the_open_record_starts_after_the_last_line_end_outside_quotes() {
        let mut tracker = QuoteTracker::new(b',', b'"', None, None);
        tracker.feed(b"a,b\n1,\"x\ny\"");
        assert_eq!(tracker.record_start(), 4);
        tracker.feed(b",2\n\n3,");
        assert_eq!(tracker.record_start(), 15);
        assert_eq!(tracker.open_record_bytes(), 2);
        // A quote never closed keeps the record open, line ends and all.
        tracker.feed(b"\"open\n\n\n");
        assert_eq!(tracker.record_start(), 15);
        assert_eq!(tracker.open_record_bytes(), 10);
    }

    #[test]
    fn fast_paths_agree_with_the_byte_by_byte_rules() {
        // A small deterministic generator over the bytes that matter.
        let alphabet = b"a,\"\n\r\\#";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for case in 0..20_000 {
            let len = case % 40;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            for (escape, comment) in [(None, None), (Some(b'\\'), None), (None, Some(b'#'))] {
                let split = if data.is_empty() {
                    0
                } else {
                    case % data.len()
                };
                let mut fast = QuoteTracker::new(b',', b'"', escape, comment);
                fast.feed(&data[..split]);
                fast.feed(&data[split..]);
                let mut reference = QuoteTracker::new(b',', b'"', escape, comment);
                reference.feed_bytewise(&data);
                assert_eq!(
                    (fast.unterminated_quote(), fast.record_start()),
                    (reference.unterminated_quote(), reference.record_start()),
                    "{:?} escape {escape:?} comment {comment:?}",
                    String::from_utf8_lossy(&data)
                );
            }
        }
    }
}
