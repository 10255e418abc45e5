//! A parser for MovieLens rating files: `ratings.dat` (`UserID::MovieID::Rating::Timestamp`,
//! ML-1M/ML-10M) and the `ratings.csv` of newer releases (`userId,movieId,rating,timestamp`).
//!
//! Hand-written rather than a CSV reader because `::` is a two-byte separator. Every error names
//! the file, the 1-based data row and the column; it never panics (fuzzed with proptest).

use crate::error::{CR_ONLY_LINES, DataError, Result, cut_short};

/// The four columns of a MovieLens ratings file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MovieLensRatings {
    pub user: Vec<i64>,
    pub item: Vec<i64>,
    pub rating: Vec<f64>,
    pub timestamp: Vec<i64>,
}

const COLUMNS: [&str; 4] = ["UserID", "MovieID", "Rating", "Timestamp"];

/// Parses a whole ratings file. `file` is only used in error messages.
pub fn parse_movielens(file: &str, bytes: &[u8]) -> Result<MovieLensRatings> {
    // A UTF-8 byte-order mark (a file saved by a Windows editor) is no part of the first id.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let row = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64
            + 1;
        DataError::bad_input(file, Some(row), None, "not valid UTF-8 text")
    })?;
    let mut lines = text.lines().peekable();
    let csv = match lines.peek() {
        Some(first) if first.trim_start().starts_with("userId") => {
            lines.next();
            true
        }
        Some(first) => !first.contains("::") && first.contains(','),
        None => false,
    };
    let mut out = MovieLensRatings::default();
    let mut row: u64 = 0;
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        row += 1;
        if line.contains('\r') {
            return Err(DataError::bad_input(file, Some(row), None, CR_ONLY_LINES));
        }
        let mut fields: [&str; 4] = [""; 4];
        let mut n = 0;
        let parts: Box<dyn Iterator<Item = &str>> = if csv {
            Box::new(line.split(','))
        } else {
            Box::new(line.split("::"))
        };
        for p in parts {
            if n == 4 {
                return Err(DataError::bad_input(
                    file,
                    Some(row),
                    None,
                    format!("more than 4 fields in {:?}", cut_short(line, 100)),
                ));
            }
            fields[n] = p.trim();
            n += 1;
        }
        if n < 4 {
            return Err(DataError::bad_input(
                file,
                Some(row),
                Some(COLUMNS[n]),
                format!(
                    "missing field (expected UserID::MovieID::Rating::Timestamp) in {:?}",
                    cut_short(line, 100)
                ),
            ));
        }
        let int = |i: usize| -> Result<i64> {
            fields[i].parse::<i64>().map_err(|_| {
                DataError::bad_input(
                    file,
                    Some(row),
                    Some(COLUMNS[i]),
                    format!("expected an integer, got {:?}", fields[i]),
                )
            })
        };
        let user = int(0)?;
        let item = int(1)?;
        let rating: f64 = fields[2]
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite())
            .ok_or_else(|| {
                DataError::bad_input(
                    file,
                    Some(row),
                    Some(COLUMNS[2]),
                    format!("expected a number, got {:?}", fields[2]),
                )
            })?;
        let ts = int(3)?;
        if ts < 0 {
            return Err(DataError::bad_input(
                file,
                Some(row),
                Some(COLUMNS[3]),
                format!("negative timestamp {ts}"),
            ));
        }
        if let Some(why) = crate::source::past_last_second(ts) {
            return Err(DataError::bad_input(file, Some(row), Some(COLUMNS[3]), why));
        }
        out.user.push(user);
        out.item.push(item);
        out.rating.push(rating);
        out.timestamp.push(ts);
    }
    if out.user.is_empty() {
        return Err(DataError::bad_input(
            file,
            None,
            None,
            "the file holds no ratings",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_dat() {
        let r = parse_movielens(
            "ratings.dat",
            b"1::1193::5::978300760\n1::661::3::978302109\n",
        )
        .unwrap();
        assert_eq!(r.user, vec![1, 1]);
        assert_eq!(r.item, vec![1193, 661]);
        assert_eq!(r.rating, vec![5.0, 3.0]);
        assert_eq!(r.timestamp, vec![978300760, 978302109]);
        let cr = parse_movielens("r.dat", b"1::1::5::978300760\r1::2::5::978300761\r")
            .unwrap_err()
            .to_string();
        assert!(
            cr.contains("row 1: its lines end in a carriage return alone"),
            "{cr}"
        );
        let long = format!("1::2::3::4::{}\n", "9".repeat(10_000));
        let e = parse_movielens("r.dat", long.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 4 fields") && e.len() < 300, "{e}");
        let bom = parse_movielens("r.dat", b"\xEF\xBB\xBF1::1193::5::978300760\n").unwrap();
        assert_eq!((bom.user, bom.item), (vec![1], vec![1193]));
    }

    #[test]
    fn parses_csv_with_header_and_crlf() {
        let r = parse_movielens(
            "ratings.csv",
            b"userId,movieId,rating,timestamp\r\n1,31,2.5,1260759144\r\n",
        )
        .unwrap();
        assert_eq!((r.user[0], r.item[0], r.rating[0]), (1, 31, 2.5));
    }

    #[test]
    fn errors_name_row_and_column() {
        let e = parse_movielens("ratings.dat", b"1::2::3::4\n1::x::3::4\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "ratings.dat, row 2, column `MovieID`: expected an integer, got \"x\""
        );
        let e = parse_movielens("r.dat", b"1::2::3::-5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1, column `Timestamp`: negative"), "{e}");
        // Milliseconds, as the CSV and Parquet readers refuse them.
        let e = parse_movielens("r.dat", b"1::2::3::978300760\n1::3::4::978300760000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 2, column `Timestamp`: timestamp 978300760000 is past the year 9999"),
            "{e}"
        );
        let e = parse_movielens("r.dat", b"1::2::3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("column `Timestamp`: missing field"), "{e}");
        let e = parse_movielens("r.dat", b"").unwrap_err().to_string();
        assert!(e.contains("no ratings"), "{e}");
        let e = parse_movielens("r.dat", b"1::2::nan::4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("column `Rating`"), "{e}");
    }

    // Cases found while fuzzing, kept as regressions.
    #[test]
    fn fuzz_found_cases() {
        assert!(parse_movielens("f", b"\xff").is_err());
        assert!(parse_movielens("f", b"::::::::").is_err());
        assert!(parse_movielens("f", b"userId").is_err());
        assert!(parse_movielens("f", b"1::2::3::4::").is_err());
        assert!(parse_movielens("f", b"1:::2::3::4").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
        #[test]
        fn never_panics(s in "[0-9:,\\-\\.a-z\\n\\r ]{0,80}") {
            let _ = parse_movielens("fuzz.dat", s.as_bytes());
        }

        #[test]
        fn round_trips_valid_rows(rows in proptest::collection::vec(
            (0i64..100_000, 0i64..100_000, 1u8..=5, 0i64..2_000_000_000), 1..20)
        ) {
            let text: String = rows.iter()
                .map(|(u, i, r, t)| format!("{u}::{i}::{r}::{t}\n"))
                .collect();
            let p = parse_movielens("ok.dat", text.as_bytes()).unwrap();
            prop_assert_eq!(p.user.len(), rows.len());
            for (k, (u, i, r, t)) in rows.iter().enumerate() {
                prop_assert_eq!((p.user[k], p.item[k], p.rating[k], p.timestamp[k]),
                                (*u, *i, *r as f64, *t));
            }
        }
    }
}
