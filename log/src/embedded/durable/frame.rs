//! The on-disk frame: every file of the durable log is a magic header, then frames of
//! `[payload length: u32 LE][CRC-32 of the payload: u32 LE][payload]`.
//!
//! Scanning a file tells its complete frames from what follows them: nothing (clean), a
//! torn tail (the last write did not reach the disk whole: a frame cut short, or the very
//! last frame failing its CRC, or zeros a file system left after a crash), or corruption
//! (a bad frame with more data after it), which only the caller can judge by where the
//! file sits.

/// The first bytes of every file: "WSLOG", a zero, the format version, a newline.
pub const MAGIC: &[u8; 8] = b"WSLOG\0\x01\n";
/// A header's size: length and CRC.
pub const HEADER: usize = 8;
/// No frame is larger: a length above this is damage, not data.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// One payload as a frame, ready to append.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What follows a file's last complete frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    Clean,
    /// The last write was cut short: the file is whole up to `valid_len`.
    Torn,
    /// A bad frame at `at` with data after it.
    Corrupt {
        at: usize,
        why: String,
    },
}

/// A scanned file: its payloads in order, where the complete frames end, and what follows.
pub struct Scan<'a> {
    pub payloads: Vec<&'a [u8]>,
    pub valid_len: usize,
    pub tail: Tail,
}

/// Scans `bytes` (a whole file). `Err` when it does not start with [`MAGIC`] (and is not
/// a file cut short while its header was written).
pub fn scan(bytes: &[u8]) -> Result<Scan<'_>, String> {
    if bytes.len() < MAGIC.len() {
        if MAGIC.starts_with(bytes) {
            return Ok(Scan {
                payloads: Vec::new(),
                valid_len: 0,
                tail: if bytes.is_empty() {
                    Tail::Clean
                } else {
                    Tail::Torn
                },
            });
        }
        return Err("it does not start as a Wellspring log file".into());
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err("it is not a Wellspring log file of this version (bad header)".into());
    }
    let mut payloads = Vec::new();
    let mut at = MAGIC.len();
    let tail = loop {
        if at == bytes.len() {
            break Tail::Clean;
        }
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            break Tail::Torn;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > MAX_PAYLOAD {
            break if rest.iter().all(|b| *b == 0) {
                Tail::Torn
            } else {
                Tail::Corrupt {
                    at,
                    why: format!("a frame of impossible length {len}"),
                }
            };
        }
        let end = HEADER + len;
        if rest.len() < end {
            break Tail::Torn;
        }
        let payload = &rest[HEADER..end];
        if crc32fast::hash(payload) != crc {
            break if rest.len() == end {
                Tail::Torn
            } else {
                Tail::Corrupt {
                    at,
                    why: "a frame fails its checksum".into(),
                }
            };
        }
        payloads.push(payload);
        at += end;
    };
    Ok(Scan {
        payloads,
        valid_len: at,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    #[test]
    fn whole_frames_scan_clean() {
        let bytes = file(&[b"one", b"two"]);
        let scan = scan(&bytes).unwrap();
        assert_eq!(scan.payloads, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(scan.valid_len, bytes.len());
        assert_eq!(scan.tail, Tail::Clean);
    }

    #[test]
    fn a_frame_cut_anywhere_is_a_torn_tail_at_the_last_whole_frame() {
        let bytes = file(&[b"one", b"two-two"]);
        let whole = file(&[b"one"]).len();
        for cut in whole + 1..bytes.len() {
            let scan = scan(&bytes[..cut]).unwrap();
            assert_eq!(scan.payloads, vec![&b"one"[..]], "cut at {cut}");
            assert_eq!(scan.valid_len, whole);
            assert_eq!(scan.tail, Tail::Torn);
        }
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 100]);
        assert_eq!(scan(&zeros).unwrap().tail, Tail::Torn);
    }

    #[test]
    fn a_bad_frame_with_data_after_it_is_corruption() {
        let mut bytes = file(&[b"one", b"two", b"three"]);
        let second = file(&[b"one"]).len();
        bytes[second + HEADER] ^= 0xff;
        let scan = scan(&bytes).unwrap();
        assert_eq!(scan.payloads.len(), 1);
        assert!(matches!(scan.tail, Tail::Corrupt { at, .. } if at == second));
        // The same damage in the last frame is a torn tail: that write did not finish.
        let mut last = file(&[b"one", b"two"]);
        let n = last.len();
        last[n - 1] ^= 0xff;
        assert_eq!(super::scan(&last).unwrap().tail, Tail::Torn);
    }

    #[test]
    fn a_file_that_is_not_ours_is_refused() {
        assert!(scan(b"hello world, not a log").is_err());
    }
}
