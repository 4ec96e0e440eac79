//! Coalescing the byte ranges Parquet asks for into fewer, larger reads.
//!
//! parquet-rs asks for a row group's (or a slice's) data as one list of
//! ranges: a column chunk each, or each column's pages. Read one after
//! another, every range waits a whole round trip to S3. Ranges close
//! together are read as one GET (the gap costs less than a round trip),
//! and the GETs run at once (see `object::S3ParquetReader`); each range is
//! then cut back out of its read, so the caller sees exactly the bytes it
//! asked for.

use std::ops::Range;

/// Ranges at most this far apart are read as one: about what S3 sends in
/// the time of one request's latency.
pub const MAX_GAP_BYTES: u64 = 1 << 20;

/// Reads of one object's ranges in flight at once.
pub const READS_IN_FLIGHT: usize = 8;

/// Where one asked-for range is found: in which read, at which offsets of
/// that read's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub read: usize,
    pub within: Range<usize>,
}

/// The reads that cover `ranges` (sorted, each merging ranges at most
/// `max_gap` apart) and, for each range in the order given, its piece.
/// Empty ranges get an empty piece of the first read (or of none when
/// nothing is read); overlapping and unsorted ranges are fine.
pub fn coalesce(ranges: &[Range<u64>], max_gap: u64) -> (Vec<Range<u64>>, Vec<Piece>) {
    let mut order: Vec<usize> = (0..ranges.len())
        .filter(|&index| ranges[index].start < ranges[index].end)
        .collect();
    order.sort_by_key(|&index| ranges[index].start);
    let mut reads: Vec<Range<u64>> = Vec::new();
    let mut read_of = vec![0usize; ranges.len()];
    for index in order {
        let range = &ranges[index];
        match reads.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(max_gap) => {
                last.end = last.end.max(range.end);
            }
            _ => reads.push(range.clone()),
        }
        read_of[index] = reads.len() - 1;
    }
    let pieces = ranges
        .iter()
        .zip(read_of)
        .map(|(range, read)| {
            if range.start >= range.end {
                return Piece {
                    read: 0,
                    within: 0..0,
                };
            }
            let start = (range.start - reads[read].start) as usize;
            Piece {
                read,
                within: start..start + (range.end - range.start) as usize,
            }
        })
        .collect();
    (reads, pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every range's bytes, cut out of the reads, are the bytes it names.
    fn check_cover(ranges: &[Range<u64>], max_gap: u64) -> Vec<Range<u64>> {
        let (reads, pieces) = coalesce(ranges, max_gap);
        assert_eq!(pieces.len(), ranges.len());
        for (range, piece) in ranges.iter().zip(&pieces) {
            if range.is_empty() {
                assert!(piece.within.is_empty());
                continue;
            }
            let read = &reads[piece.read];
            assert_eq!(read.start + piece.within.start as u64, range.start);
            assert_eq!(read.start + piece.within.end as u64, range.end);
            assert!(range.end <= read.end);
        }
        for pair in reads.windows(2) {
            assert!(
                pair[0].end + max_gap < pair[1].start,
                "reads merged: {reads:?}"
            );
        }
        reads
    }

    #[test]
    fn close_ranges_are_read_together_and_far_ones_apart() {
        let reads = check_cover(&[0..10, 15..20, 100..110], 5);
        assert_eq!(reads, vec![0..20, 100..110]);
        // Exactly the gap apart still merges.
        let reads = check_cover(&[0..10, 15..20], 5);
        assert_eq!(reads, vec![0..20]);
        let reads = check_cover(&[0..10, 16..20], 5);
        assert_eq!(reads, vec![0..10, 16..20]);
    }

    #[test]
    fn unsorted_overlapping_and_empty_ranges_keep_their_order() {
        let ranges = [50..60, 0..10, 5..30, 55..58, 7..7, 200..201];
        let reads = check_cover(&ranges, 0);
        assert_eq!(reads, vec![0..30, 50..60, 200..201]);
        let (_, pieces) = coalesce(&ranges, 0);
        assert_eq!(
            pieces[0],
            Piece {
                read: 1,
                within: 0..10
            }
        );
        assert_eq!(
            pieces[3],
            Piece {
                read: 1,
                within: 5..8
            }
        );
    }

    #[test]
    fn nothing_to_read() {
        assert_eq!(coalesce(&[], MAX_GAP_BYTES), (vec![], vec![]));
        let (reads, pieces) = coalesce(&[3..3, 9..9], MAX_GAP_BYTES);
        assert!(reads.is_empty());
        assert!(pieces.iter().all(|piece| piece.within.is_empty()));
    }

    #[test]
    fn no_overflow_at_the_end_of_the_address_space() {
        let top = u64::MAX - 1;
        check_cover(&[top - 10..top, 0..1], u64::MAX);
    }
}
