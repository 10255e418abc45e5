//! A reader for NumPy `.npy` files (format versions 1.0–3.0), enough for the DiffRec paper's
//! files: 2-D little-endian `int64`/`int32` id lists and `float32` embedding matrices (and
//! `float64`, NumPy's default float type), C order.
//!
//! The parser never panics on malformed input (it is fuzzed with proptest); every failure is a
//! [`DataError::BadInput`] naming the file.

use crate::error::{DataError, Result};

/// Element type of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<i8`
    I64,
    /// `<i4`
    I32,
    /// `<f4`
    F32,
    /// `<f8`
    F64,
}

impl NpyDtype {
    /// `true` for `F32` and `F64`.
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64)
    }
}

/// A parsed 2-D array (a 1-D array is read as `n × 1`; `ndim` tells them apart).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub dtype: NpyDtype,
    /// 1 or 2: the number of dimensions in the file's header.
    pub ndim: usize,
    pub rows: usize,
    pub cols: usize,
    /// Row-major raw little-endian payload, `rows * cols * itemsize` bytes.
    data: Vec<u8>,
}

impl NpyArray {
    /// Element `(r, c)` widened to `i64`; `None` for float arrays.
    pub fn get_i64(&self, r: usize, c: usize) -> Option<i64> {
        let i = r * self.cols + c;
        match self.dtype {
            NpyDtype::I64 => Some(i64::from_le_bytes(
                self.data[i * 8..i * 8 + 8].try_into().ok()?,
            )),
            NpyDtype::I32 => {
                Some(i32::from_le_bytes(self.data[i * 4..i * 4 + 4].try_into().ok()?) as i64)
            }
            NpyDtype::F32 | NpyDtype::F64 => None,
        }
    }

    /// Column `c` of an integer array as `i64`s.
    pub fn column_i64(&self, c: usize) -> Option<Vec<i64>> {
        if self.dtype.is_float() || c >= self.cols {
            return None;
        }
        (0..self.rows).map(|r| self.get_i64(r, c)).collect()
    }

    /// The whole array as `f32`s, row-major; `None` for integer arrays. `float64` values are
    /// rounded to the nearest `f32`, so a finite value beyond `f32::MAX` becomes infinite:
    /// [`Self::first_beyond_f32`] finds those first.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self.dtype {
            NpyDtype::F32 => Some(
                self.data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            NpyDtype::F64 => Some(self.f64_values().map(|v| v as f32).collect()),
            NpyDtype::I64 | NpyDtype::I32 => None,
        }
    }

    /// Row-major index and value of the first finite `float64` element that `f32` cannot hold
    /// (beyond ±`f32::MAX`); `None` for every other array.
    pub fn first_beyond_f32(&self) -> Option<(usize, f64)> {
        if self.dtype != NpyDtype::F64 {
            return None;
        }
        self.f64_values()
            .enumerate()
            .find(|&(_, v)| v.is_finite() && (v as f32).is_infinite())
    }

    fn f64_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8 bytes")))
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Parses a whole `.npy` file. `file` is only used in error messages.
pub fn parse_npy(file: &str, bytes: &[u8]) -> Result<NpyArray> {
    let bad = |msg: String| DataError::bad_input(file, None, None, msg);
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("not a .npy file (missing the \\x93NUMPY magic)".into()));
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated .npy header".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(format!("unsupported .npy format version {v}"))),
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("truncated .npy header".into()))?;
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| bad(".npy header is not valid text".into()))?;

    let descr = dict_value(header, "descr")
        .ok_or_else(|| bad(format!("no 'descr' in .npy header {header:?}")))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (dtype, itemsize) = match descr {
        "<i8" | "|i8" => (NpyDtype::I64, 8),
        "<i4" | "|i4" => (NpyDtype::I32, 4),
        "<f4" | "|f4" => (NpyDtype::F32, 4),
        "<f8" | "|f8" => (NpyDtype::F64, 8),
        other => {
            return Err(bad(format!(
                "unsupported dtype {other:?}; expected little-endian int64 ('<i8'), int32 \
                 ('<i4'), float32 ('<f4') or float64 ('<f8')"
            )));
        }
    };
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| bad(format!("no 'fortran_order' in .npy header {header:?}")))?;
    if fortran != "False" {
        return Err(bad(
            "Fortran-ordered arrays are not supported; save with C order".into(),
        ));
    }
    let shape_txt = dict_value(header, "shape")
        .ok_or_else(|| bad(format!("no 'shape' in .npy header {header:?}")))?;
    let shape = parse_shape(shape_txt).ok_or_else(|| bad(format!("bad shape {shape_txt:?}")))?;
    let (rows, cols) = match shape.as_slice() {
        [n] => (*n, 1),
        [r, c] => (*r, *c),
        s => {
            return Err(bad(format!("expected a 1-D or 2-D array, got shape {s:?}")));
        }
    };
    let expected = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(itemsize))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let payload = &bytes[data_start..];
    if payload.len() != expected {
        return Err(bad(format!(
            "shape {shape:?} of {descr} needs {expected} data bytes, the file has {}",
            payload.len()
        )));
    }
    Ok(NpyArray {
        dtype,
        ndim: shape.len(),
        rows,
        cols,
        data: payload.to_vec(),
    })
}

/// Finds `'key': value` in a Python dict literal; returns the value text (a tuple stays whole).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_sq = format!("'{key}'");
    let pat_dq = format!("\"{key}\"");
    let pos = header
        .find(&pat_sq)
        .map(|p| p + pat_sq.len())
        .or_else(|| header.find(&pat_dq).map(|p| p + pat_dq.len()))?;
    let rest = header[pos..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<usize>().ok())
        .collect()
}

/// Serialises a C-order `int64` or `float32` array as `.npy` v1.0 (used by tests and fixtures).
pub fn write_npy_i64(rows: usize, cols: usize, values: &[i64]) -> Vec<u8> {
    let payload: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy_raw("<i8", rows, cols, &payload)
}

/// Serialises a C-order `float32` array as `.npy` v1.0.
pub fn write_npy_f32(rows: usize, cols: usize, values: &[f32]) -> Vec<u8> {
    let payload: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy_raw("<f4", rows, cols, &payload)
}

fn write_npy_raw(descr: &str, rows: usize, cols: usize, payload: &[u8]) -> Vec<u8> {
    npy_v1_file(
        &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}"),
        payload,
    )
}

/// A `.npy` file of format 1.0 with the header dict `header` exactly as given (e.g. as NumPy
/// writes it), padded with spaces and a newline as NumPy pads it, then `payload`.
pub fn npy_v1_file(header: &str, payload: &[u8]) -> Vec<u8> {
    let mut header = header.to_owned();
    // Pad so that magic + version + len + header + '\n' is a multiple of 64.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_int64_pairs() {
        let bytes = write_npy_i64(3, 2, &[0, 1, 0, 2, 5, 7]);
        assert_eq!(bytes.len() % 16, 0);
        let a = parse_npy("t.npy", &bytes).unwrap();
        assert_eq!((a.rows, a.cols, a.dtype), (3, 2, NpyDtype::I64));
        assert_eq!(a.column_i64(0).unwrap(), vec![0, 0, 5]);
        assert_eq!(a.column_i64(1).unwrap(), vec![1, 2, 7]);
    }

    #[test]
    fn reads_a_hand_written_numpy_header() {
        // Exactly what numpy 1.x writes for np.array([[3, 4]], dtype=np.int64).
        let mut b = b"\x93NUMPY\x01\x00v\x00".to_vec();
        let h = "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }";
        let mut h = h.to_string();
        h.push_str(&" ".repeat(118 - h.len() - 1));
        h.push('\n');
        assert_eq!(h.len(), 118);
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&3i64.to_le_bytes());
        b.extend_from_slice(&4i64.to_le_bytes());
        let a = parse_npy("h.npy", &b).unwrap();
        assert_eq!(a.get_i64(0, 1), Some(4));
    }

    #[test]
    fn wrong_dtype_is_named() {
        let mut bytes = write_npy_i64(1, 2, &[1, 2]);
        let pos = bytes.windows(3).position(|w| w == b"<i8").unwrap();
        bytes[pos..pos + 3].copy_from_slice(b">f8");
        let e = parse_npy("train_list.npy", &bytes).unwrap_err().to_string();
        assert!(e.contains("train_list.npy") && e.contains(">f8"), "{e}");
    }

    #[test]
    fn float64_and_one_dimensional_arrays_are_read() {
        // What NumPy 2.4 writes for np.array([0.5, -3.0]) (float64, shape (2,)): 128 bytes of
        // magic, version, header length 0x76 and padded header, then the payload.
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }";
        let payload = [0, 0, 0, 0, 0, 0, 0xe0, 0x3f, 0, 0, 0, 0, 0, 0, 0x08, 0xc0];
        let mut b = npy_v1_file(header, &payload);
        assert_eq!(
            (b.len(), &b[..10]),
            (144, &b"\x93NUMPY\x01\x00\x76\x00"[..])
        );
        let a = parse_npy("v.npy", &b).unwrap();
        assert_eq!((a.dtype, a.ndim, a.rows, a.cols), (NpyDtype::F64, 1, 2, 1));
        assert_eq!(a.to_f32(), Some(vec![0.5, -3.0]));
        assert_eq!(a.get_i64(0, 0), None, "floats are not ids");
        assert_eq!(a.first_beyond_f32(), None);
        let two_d = parse_npy("m.npy", &write_npy_f32(1, 2, &[1.0, 2.0])).unwrap();
        assert_eq!((two_d.ndim, two_d.first_beyond_f32()), (2, None));
        // 1e39 is finite in f64 and beyond f32::MAX.
        let n = b.len();
        b[n - 8..].copy_from_slice(&1e39f64.to_le_bytes());
        let a = parse_npy("v.npy", &b).unwrap();
        assert_eq!(a.first_beyond_f32(), Some((1, 1e39)));
    }

    #[test]
    fn wrong_payload_size_is_refused() {
        let mut bytes = write_npy_i64(2, 2, &[1, 2, 3, 4]);
        bytes.truncate(bytes.len() - 8);
        let e = parse_npy("x.npy", &bytes).unwrap_err().to_string();
        assert!(e.contains("needs 32 data bytes"), "{e}");
    }

    #[test]
    fn three_d_is_refused() {
        let mut bytes = write_npy_i64(2, 2, &[1, 2, 3, 4]);
        let pos = bytes.windows(6).position(|w| w == b"(2, 2)").unwrap();
        bytes.splice(pos..pos + 6, b"(2,1,2)".iter().copied());
        // Header length changed by one byte: fix the length field to keep the file consistent.
        let hl = u16::from_le_bytes([bytes[8], bytes[9]]) + 1;
        bytes[8..10].copy_from_slice(&hl.to_le_bytes());
        let e = parse_npy("x.npy", &bytes).unwrap_err().to_string();
        assert!(e.contains("1-D or 2-D"), "{e}");
    }

    // Cases found while fuzzing, kept as regressions.
    #[test]
    fn fuzz_found_cases_do_not_panic() {
        for case in [
            &b"\x93NUMPY\x01\x00\xff\xff"[..],
            b"\x93NUMPY\x02\x00\x00\x00",
            b"\x93NUMPY\x01\x00\x05\x00{'sh",
            b"\x93NUMPY\x01\x00\x40\x00{'descr': '<i8', 'fortran_order': False, 'shape': (99999999999999999999, 2)}",
            b"\x93NUMPY\x01\x00\x3c\x00{'descr': '<i8', 'fortran_order': False, 'shape': (4611686018427387904, 4)}",
        ] {
            assert!(parse_npy("f.npy", case).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_npy("fuzz.npy", &bytes);
        }

        #[test]
        fn never_panics_on_mutated_headers(
            rows in 0usize..5, pos in 0usize..128, byte in any::<u8>()
        ) {
            let vals: Vec<i64> = (0..rows as i64 * 2).collect();
            let mut bytes = write_npy_i64(rows, 2, &vals);
            let p = pos % bytes.len();
            bytes[p] = byte;
            let _ = parse_npy("fuzz.npy", &bytes);
        }
    }
}
