//! Tiny real image files, written byte by byte: an uncompressed 16-bit grayscale TIFF
//! (what Opera/Phenix, ImageXpress and CV8000 write) and an 8-bit grayscale PNG (what the
//! RxRx datasets hold). Any TIFF or PNG reader (tifffile, Pillow) reads them.

use std::path::Path;

/// Writes `pixels` (row-major, `width` × `height`) as a little-endian, uncompressed,
/// single-strip 16-bit grayscale TIFF.
pub fn write_tiff_gray16(path: &Path, width: u32, height: u32, pixels: &[u16]) {
    assert_eq!(
        pixels.len(),
        (width * height) as usize,
        "pixels for {width}×{height}"
    );
    const ENTRIES: u16 = 9;
    let data_offset = 8 + 2 + u32::from(ENTRIES) * 12 + 4;
    let mut out = Vec::with_capacity(data_offset as usize + pixels.len() * 2);
    out.extend_from_slice(b"II*\0");
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&ENTRIES.to_le_bytes());
    // (tag, type: 3 SHORT / 4 LONG, value), in tag order.
    let entries: [(u16, u16, u32); ENTRIES as usize] = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 16),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, data_offset),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, width * height * 2),
    ];
    for (tag, kind, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        if kind == 3 {
            out.extend_from_slice(&(value as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    for pixel in pixels {
        out.extend_from_slice(&pixel.to_le_bytes());
    }
    write(path, &out);
}

/// Writes `pixels` (row-major, `width` × `height`) as an 8-bit grayscale PNG (stored,
/// uncompressed deflate blocks).
pub fn write_png_gray8(path: &Path, width: u32, height: u32, pixels: &[u8]) {
    assert_eq!(
        pixels.len(),
        (width * height) as usize,
        "pixels for {width}×{height}"
    );
    let mut raw = Vec::with_capacity(pixels.len() + height as usize);
    for row in pixels.chunks(width as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &header);
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    write(path, &out);
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", parent.display()));
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_their_references() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }
}
