//! Reading a raw interaction log into a Polars frame with one fixed layout, whatever the source
//! format, and checking it: every bad value is reported with file, row and column.
//!
//! The frame has columns `user` and `item` (original ids: `Int64` or `String`), `ts` (`Int64`
//! seconds, null when the source has no time), `rating` (`Float64`, null when absent), `order`
//! (`Int64`, the row's position in the source: the tie-breaker for equal times, and the time
//! itself when there is none) and, for pre-split sources, `split`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use polars::prelude::*;

use crate::config::{DataConfig, SourceFormat};
use crate::error::{CR_ONLY_LINES, DataError, Result, cut_short};
use crate::movielens::parse_movielens;
use crate::npy::parse_npy;
use crate::parquet_source::read_parquet;
use crate::workspace::{Workspace, sha256_hex};

/// The raw interactions of one source, before any transform.
#[derive(Debug)]
pub struct RawInteractions {
    /// See the module doc for the columns.
    pub df: DataFrame,
    /// Whether `ts` holds real times.
    pub has_timestamps: bool,
    /// Whether `rating` holds real ratings.
    pub has_ratings: bool,
    /// Whether the frame carries a `split` column.
    pub predefined: bool,
    /// `source/<file name>` of each file read, with its SHA-256 (the manifest's input hashes;
    /// keyed by name, not path, so moving the data or running from another directory does not
    /// invalidate a stage).
    pub inputs: Vec<(String, String)>,
    /// The source as the user named it (for error messages).
    pub source_name: String,
}

/// Where the source lives, resolved from `data.source.path`.
#[derive(Debug, Clone)]
enum SourceLocation {
    Local(PathBuf),
    InWorkspace(String),
    Url(String),
}

fn resolve(path: &str, base_dir: &Path) -> SourceLocation {
    if let Some(key) = path.strip_prefix("workspace:") {
        SourceLocation::InWorkspace(key.trim_start_matches('/').to_owned())
    } else if let Some(p) = crate::workspace::file_url_path(path) {
        SourceLocation::Local(p)
    } else if path.contains("://") {
        SourceLocation::Url(path.to_owned())
    } else {
        let p = Path::new(path);
        SourceLocation::Local(if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        })
    }
}

impl SourceLocation {
    fn join(&self, name: &str) -> SourceLocation {
        match self {
            SourceLocation::Local(p) => SourceLocation::Local(p.join(name)),
            SourceLocation::InWorkspace(k) => {
                SourceLocation::InWorkspace(format!("{}/{name}", k.trim_end_matches('/')))
            }
            SourceLocation::Url(u) => {
                SourceLocation::Url(format!("{}/{name}", u.trim_end_matches('/')))
            }
        }
    }

    fn display(&self) -> String {
        match self {
            SourceLocation::Local(p) => p.display().to_string(),
            SourceLocation::InWorkspace(k) => format!("workspace:{k}"),
            SourceLocation::Url(u) => u.clone(),
        }
    }

    async fn read(&self, ws: &Workspace) -> Result<Bytes> {
        match self {
            SourceLocation::Local(p) => match tokio::fs::read(p).await {
                Ok(b) => Ok(Bytes::from(b)),
                Err(_) if p.is_dir() => Err(DataError::bad_input(
                    p.display().to_string(),
                    None,
                    None,
                    "is a folder, not a file (for a MovieLens source, name its ratings.dat or \
                     ratings.csv)",
                )),
                Err(e) => Err(DataError::bad_input(
                    p.display().to_string(),
                    None,
                    None,
                    format!("cannot read the file: {e}"),
                )),
            },
            SourceLocation::InWorkspace(k) => ws.get(k).await.map_err(|e| match e {
                DataError::MissingArtifact { .. } => DataError::bad_input(
                    self.display(),
                    None,
                    None,
                    "no such file in the workspace",
                ),
                e => e,
            }),
            SourceLocation::Url(u) => {
                // The file's URL opened as a store whose prefix is the file's own key: its
                // name is read as written (`évents.csv`, `a b.csv`), as the prefix is.
                // What is wrong with the URL, named as the source's.
                let of_source = |e| match e {
                    DataError::WorkspaceUrl { message, .. } => {
                        DataError::bad_input(u.clone(), None, None, message)
                    }
                    e => e,
                };
                let file = Workspace::open_existing(u).map_err(of_source)?;
                file.check_reachable().await.map_err(of_source)?;
                file.get("").await.map_err(|e| match e {
                    DataError::MissingArtifact { .. } => DataError::bad_input(
                        u.clone(),
                        None,
                        None,
                        "no such file at this URL (for a MovieLens source, name its \
                         ratings.dat or ratings.csv; for a diffrec-npy source, its folder)",
                    ),
                    e => e,
                })
            }
        }
    }
}

/// Reads one input file named the way `data.source.path` is (a path relative to `base_dir`, an
/// absolute path, `file://…`, `workspace:KEY`, or an object-store URL). Returns a display name
/// and the bytes; a missing file is a [`DataError::BadInput`] naming it.
pub async fn read_path(path: &str, base_dir: &Path, ws: &Workspace) -> Result<(String, Bytes)> {
    let loc = resolve(path, base_dir);
    let bytes = loc.read(ws).await?;
    Ok((loc.display(), bytes))
}

/// Reads and checks the configured source. `base_dir` resolves relative paths (the pipeline
/// file's directory).
pub async fn load_source(
    cfg: &DataConfig,
    base_dir: &Path,
    ws: &Workspace,
) -> Result<RawInteractions> {
    let loc = resolve(&cfg.source.path, base_dir);
    match cfg.source.format {
        SourceFormat::DiffrecNpy => {
            let mut parts = Vec::new();
            let mut inputs = Vec::new();
            for name in ["train_list.npy", "valid_list.npy", "test_list.npy"] {
                let file = loc.join(name);
                let bytes = file.read(ws).await?;
                inputs.push((format!("source/{name}"), sha256_hex(&bytes)));
                parts.push((file.display(), bytes));
            }
            let df = npy_frame(&parts)?;
            Ok(RawInteractions {
                df,
                has_timestamps: false,
                has_ratings: false,
                predefined: true,
                inputs,
                source_name: loc.display(),
            })
        }
        format => {
            let bytes = loc.read(ws).await?;
            let name = loc.display();
            let base = name.rsplit(['/', ':']).next().unwrap_or(&name);
            let inputs = vec![(format!("source/{base}"), sha256_hex(&bytes))];
            let df = match format {
                SourceFormat::Movielens => movielens_frame(&name, &bytes),
                SourceFormat::Csv => {
                    read_csv(&name, bytes, cfg).and_then(|df| mapped_frame(&name, df, cfg))
                }
                SourceFormat::Parquet => {
                    let wanted: Vec<String> =
                        wanted_columns(cfg).into_iter().map(|(_, n)| n).collect();
                    read_parquet(&name, bytes, &wanted).and_then(|df| mapped_frame(&name, df, cfg))
                }
                SourceFormat::DiffrecNpy => unreachable!("handled above"),
            }
            .map_err(|e| without_time_hint(e, cfg))?;
            Ok(RawInteractions {
                df,
                has_timestamps: cfg.has_timestamps(),
                has_ratings: cfg.has_ratings(),
                predefined: false,
                inputs,
                source_name: name,
            })
        }
    }
}

fn polars_err(ctx: &str) -> impl FnOnce(PolarsError) -> DataError + '_ {
    move |e| DataError::polars(ctx)(e)
}

fn npy_frame(parts: &[(String, Bytes)]) -> Result<DataFrame> {
    let mut users = Vec::new();
    let mut items = Vec::new();
    let mut splits: Vec<&str> = Vec::new();
    for ((file, bytes), split) in parts.iter().zip(["train", "valid", "test"]) {
        let a = parse_npy(file, bytes)?;
        if a.cols != 2 || a.dtype.is_float() {
            return Err(DataError::bad_input(
                file,
                None,
                None,
                format!(
                    "expected an integer array of shape (N, 2) with rows [user, item], got {:?} of shape ({}, {})",
                    a.dtype, a.rows, a.cols
                ),
            ));
        }
        if a.rows == 0 {
            return Err(DataError::bad_input(file, None, None, "the array is empty"));
        }
        for r in 0..a.rows {
            for (c, name, out) in [(0, "user", &mut users), (1, "item", &mut items)] {
                let v = a.get_i64(r, c).unwrap_or(-1);
                if v < 0 {
                    return Err(DataError::bad_input(
                        file,
                        Some(r as u64 + 1),
                        Some(name),
                        format!("negative id {v}"),
                    ));
                }
                out.push(v);
            }
            splits.push(split);
        }
    }
    let n = users.len();
    DataFrame::new(
        n,
        vec![
            Column::new("user".into(), users),
            Column::new("item".into(), items),
            Column::full_null("ts".into(), n, &DataType::Int64),
            Column::full_null("rating".into(), n, &DataType::Float64),
            Column::new("order".into(), (0..n as i64).collect::<Vec<_>>()),
            Column::new("split".into(), splits),
        ],
    )
    .map_err(polars_err("building the npy frame"))
}

fn movielens_frame(file: &str, bytes: &[u8]) -> Result<DataFrame> {
    let r = parse_movielens(file, bytes)?;
    let n = r.user.len();
    DataFrame::new(
        n,
        vec![
            Column::new("user".into(), r.user),
            Column::new("item".into(), r.item),
            Column::new("ts".into(), r.timestamp),
            Column::new("rating".into(), r.rating),
            Column::new("order".into(), (0..n as i64).collect::<Vec<_>>()),
        ],
    )
    .map_err(polars_err("building the MovieLens frame"))
}

/// A timestamp column not found may be a source without time: say how to declare one.
fn without_time_hint(e: DataError, cfg: &DataConfig) -> DataError {
    match e {
        DataError::BadInput {
            location,
            mut message,
        } if message.starts_with("column not found")
            && location.column.is_some()
            && location.column == cfg.source.columns.timestamp =>
        {
            message.push_str(
                "; a source without times: `data.source.columns.timestamp: null` (row order \
                 is then time)",
            );
            DataError::BadInput { location, message }
        }
        e => e,
    }
}

/// The source columns the mapping needs, in (role, name) pairs.
fn wanted_columns(cfg: &DataConfig) -> Vec<(&'static str, String)> {
    let c = &cfg.source.columns;
    let mut v = vec![("user", c.user.clone()), ("item", c.item.clone())];
    if let Some(t) = &c.timestamp {
        v.push(("ts", t.clone()));
    }
    if let Some(r) = &c.rating {
        v.push(("rating", r.clone()));
    }
    v
}

fn read_csv(file: &str, bytes: Bytes, cfg: &DataConfig) -> Result<DataFrame> {
    let sep = cfg.source.delimiter as u8;
    // A UTF-8 byte-order mark (spreadsheet "CSV UTF-8" exports) is not part of the first name.
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(_) => bytes.slice(3..),
        None => bytes,
    };
    // Blank lines at the end (an editor's or a concatenation's) are no rows; the reader would
    // read each as a row of nulls ("missing id").
    let bytes = match bytes.iter().rposition(|b| !b.is_ascii_whitespace()) {
        Some(last) => bytes.slice(..=last),
        None => bytes,
    };
    // Check the header ourselves so a missing column is named with the ones that exist.
    let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    // Lines ended by CR alone (classic Mac, some Excel exports): the reader would take the whole
    // file for its header.
    let mut line_end = first_line.len();
    while line_end > 0 && first_line[line_end - 1] == b'\r' {
        line_end -= 1;
    }
    if first_line[..line_end].contains(&b'\r') {
        return Err(DataError::bad_input(file, None, None, CR_ONLY_LINES));
    }
    // The names as the reader takes them (a quoted name without its quotes, spaces kept), and
    // as people read them: `who, what` maps `what`, whether written ` what` or `what`.
    let raw_header: Vec<String> = String::from_utf8_lossy(first_line)
        .trim_end_matches('\r')
        .split(sep as char)
        .map(
            |s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                Some(unquoted) => unquoted.to_owned(),
                None => s.to_owned(),
            },
        )
        .collect();
    let header: Vec<String> = raw_header
        .iter()
        .map(|s| s.trim().trim_matches('"').to_owned())
        .collect();
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DataError::bad_input(file, None, None, "the file is empty"));
    }
    let wanted = wanted_columns(cfg);
    // Each mapped name's column as the reader names it: the exact name, else the one equal
    // to it without surrounding spaces.
    let mut in_file: Vec<&str> = Vec::with_capacity(wanted.len());
    for (_, name) in &wanted {
        // The reader would take the first of two such columns and say nothing.
        let same: Vec<usize> = (0..header.len())
            .filter(|&i| raw_header[i] == *name || header[i] == name.trim())
            .collect();
        if same.len() > 1 {
            return Err(DataError::bad_input(
                file,
                None,
                Some(name),
                format!(
                    "the header names this column {} times (columns {}): rename all but one",
                    same.len(),
                    same.iter()
                        .map(|i| (i + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let found = raw_header
            .iter()
            .position(|h| h == name)
            .or_else(|| header.iter().position(|h| h == name.trim()));
        let Some(i) = found else {
            return Err(DataError::bad_input(
                file,
                None,
                Some(name),
                format!(
                    "column not found; the header has {}{}",
                    header_shown(&header),
                    delimiter_hint(&header, sep as char)
                ),
            ));
        };
        in_file.push(&raw_header[i]);
    }
    let names: Arc<[PlSmallStr]> = in_file.iter().map(|n| PlSmallStr::from(*n)).collect();
    let read = |as_strings: bool, ragged: bool| {
        let mut opts = CsvReadOptions::default()
            .with_has_header(true)
            .with_columns(Some(names.clone()))
            .with_infer_schema_length(Some(10_000))
            .map_parse_options(|o| o.with_separator(sep).with_truncate_ragged_lines(ragged));
        // Ids are read as text always (type inference would read `007` as 7 and merge it
        // with `7`); with `as_strings`, every column.
        let schema: Schema = wanted
            .iter()
            .zip(&in_file)
            .filter(|((role, _), _)| as_strings || matches!(*role, "user" | "item"))
            .map(|(_, n)| Field::new((*n).into(), DataType::String))
            .collect();
        opts = opts.with_schema_overwrite(Some(Arc::new(schema)));
        let mut df = opts
            .into_reader_with_file_handle(Cursor::new(bytes.clone()))
            .finish()?;
        // The mapped names from here on.
        for ((_, name), n) in wanted.iter().zip(&in_file) {
            if name != n {
                df.rename(n, name.as_str().into())?;
            }
        }
        Ok::<_, PolarsError>(df)
    };
    let long_row = |(row, fields): (u64, usize)| {
        DataError::bad_input(
            file,
            Some(row),
            None,
            format!(
                "{fields} fields where the header has {} (a stray {:?}? \
                 `data.source.delimiter` is {:?})",
                header.len(),
                sep as char,
                sep as char
            ),
        )
    };
    let df = match read(false, false) {
        Ok(df) => ids_as_written(file, df, &wanted)?,
        // A row ends in a delimiter, or inference guessed a type that a later row breaks: then
        // read as text and let the column checks find the row.
        Err(first) => {
            // The reader refuses a long row only when it reads every column, so only then is
            // a long row the cause; and only then can it refuse a row that ends in a
            // delimiter (one blank field past the header's, no field: it takes that only on
            // the last line). With no long row found, cutting rows to the header's width
            // drops nothing but those blanks.
            let every_column = wanted.len() == header.len();
            let long = every_column
                .then(|| first_long_row(&bytes, sep, header.len()))
                .flatten();
            if let Some(long) = long {
                return Err(long_row(long));
            }
            // Cut, typed first (integer ids keep their numeric order), else as text.
            match every_column.then(|| read(false, true)) {
                Some(Ok(df)) => ids_as_written(file, df, &wanted)?,
                _ => read(true, every_column).map_err(|e| {
                    if let Some((row, column)) = first_invalid_utf8(&bytes, sep, &header) {
                        return DataError::bad_input(
                            file,
                            row,
                            column.as_deref(),
                            "not valid UTF-8 text (save the file as UTF-8)",
                        );
                    }
                    // The reader's messages may quote the rest of the file and suggest
                    // options of its Python API: the first line, cut short.
                    let (e, first) = (reader_message(&e), reader_message(&first));
                    let message = if e == first {
                        format!("cannot parse CSV: {e}")
                    } else {
                        format!("cannot parse CSV: {e} (read with inferred types: {first})")
                    };
                    DataError::bad_input(file, None, None, message)
                })?,
            }
        }
    };
    // With fewer columns than the header the reader drops a long row's extra fields silently,
    // and a stray delimiter in a mapped field shifts the fields after it: one pass over the
    // bytes finds such a row, only for files with unmapped columns.
    if wanted.len() < header.len() {
        if let Some(long) = first_long_row(&bytes, sep, header.len()) {
            return Err(long_row(long));
        }
    }
    Ok(df)
}

/// The CSV's id columns as their text, except a column whose every value is an integer as an
/// integer is written (`-3`, `0`, `42`; no sign `+`, no leading zero, within i64), which is
/// typed `Int64` as inference would type it, so numeric ids keep sorting numerically. `007`
/// stays text, apart from `7`.
fn ids_as_written(file: &str, mut df: DataFrame, wanted: &[(&str, String)]) -> Result<DataFrame> {
    for (role, name) in wanted {
        if !matches!(*role, "user" | "item") {
            continue;
        }
        let Ok(col) = df.column(name.as_str()) else {
            continue;
        };
        if col.dtype() != &DataType::String {
            continue;
        }
        let col = without_spaces_around(file, name, col)?;
        let text = col.str().map_err(polars_err("reading ids"))?;
        let canonical = |s: &str| {
            let digits = s.strip_prefix('-').unwrap_or(s);
            !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'))
                && !(s.starts_with('-') && digits == "0")
                && s.parse::<i64>().is_ok()
        };
        if text.null_count() == 0 && text.iter().all(|v| v.is_some_and(canonical)) {
            let ints = col
                .strict_cast(&DataType::Int64)
                .map_err(polars_err("typing integer ids"))?;
            df.with_column(ints)
                .map_err(polars_err("typing integer ids"))?;
        } else {
            df.with_column(col.clone())
                .map_err(polars_err("reading ids"))?;
        }
    }
    Ok(df)
}

/// String ids without the spaces around them (a spreadsheet's padding, `a, b` after a comma):
/// ` CUST-1` and `CUST-1` are one user, as `diffrec recommend` finds them. A warning counts the
/// ids changed and names the first one's row.
fn without_spaces_around(file: &str, name: &str, col: &Column) -> Result<Column> {
    let text = col.str().map_err(polars_err("reading ids"))?;
    let padded = |v: &Option<&str>| v.is_some_and(|s| s.len() != s.trim().len());
    let Some(first) = text.iter().position(|v| padded(&v)) else {
        return Ok(col.clone());
    };
    let count = text.iter().filter(padded).count();
    tracing::warn!(
        "{file}, column `{name}`: {count} id(s) have spaces around them (the first at row {}: \
         {:?}); taken without them",
        first + 1,
        text.get(first).unwrap_or_default()
    );
    let trimmed: StringChunked = text.iter().map(|v| v.map(str::trim)).collect();
    Ok(trimmed.with_name(col.name().clone()).into_column())
}

/// A hint when a one-field header holds another common delimiter: the file was likely written
/// with it (a semicolon CSV from a European spreadsheet, a TSV).
fn delimiter_hint(header: &[String], sep: char) -> String {
    let [only] = header else {
        return String::new();
    };
    [';', '\t', '|', ',']
        .into_iter()
        .find(|&d| d != sep && only.contains(d))
        .map(|d| format!("; the header line holds {d:?}: set `data.source.delimiter` to it"))
        .unwrap_or_default()
}

/// The first line of a reader's error, at most 300 characters: Polars may quote the rest of
/// the file and suggest options of its Python API.
fn reader_message(e: &PolarsError) -> String {
    cut_short(e.to_string().lines().next().unwrap_or_default(), 300)
}

/// Where the first byte that is not UTF-8 is: its data row (from 1; `None` in the header) and
/// the column the header names there; `None` for valid text.
fn first_invalid_utf8(
    bytes: &[u8],
    sep: u8,
    header: &[String],
) -> Option<(Option<u64>, Option<String>)> {
    let at = std::str::from_utf8(bytes).err()?.valid_up_to();
    let before = &bytes[..at];
    let row = before.iter().filter(|&&b| b == b'\n').count() as u64;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let field = before[line_start..].iter().filter(|&&b| b == sep).count();
    let column = (row > 0).then(|| header.get(field).cloned()).flatten();
    Some(((row > 0).then_some(row), column))
}

/// The header's names for a message: all of them, or the first 20 of a longer one.
fn header_shown(header: &[String]) -> String {
    match header.len() {
        0..=20 => format!("{header:?}"),
        n => format!("{:?} and {} more", &header[..20], n - 20),
    }
}

/// The first data row (from 1) with more fields than the header's `width`, and its field count.
/// Quoted fields may hold the delimiter and line breaks; as for the reader, a quote opens one
/// only as a field's first byte (`12" vinyl` is plain text). A blank line counts as a row, as
/// the reader counts it (a row of nulls), so the other checks' row numbers agree with these.
/// Run after the reader failed, and on files with unmapped columns (whose long rows the reader
/// cuts silently): one pass over the bytes, ~0.1 s per 100 MB.
fn first_long_row(bytes: &[u8], sep: u8, width: usize) -> Option<(u64, usize)> {
    let (mut record, mut fields, mut in_quotes, mut empty) = (0u64, 1usize, false, true);
    // Whether this byte starts a field, and whether the one before closed a quoted field.
    let (mut field_start, mut closed) = (true, false);
    // Whether the row's last field so far is blank: one blank field past the header's width
    // (a trailing delimiter, as spreadsheets write) is no extra field, for the reader either.
    let mut blank = true;
    let long = |fields: usize, blank: bool| fields > width + 1 || (fields > width && !blank);
    for &b in bytes {
        let starts = std::mem::replace(&mut field_start, false);
        let after_close = std::mem::replace(&mut closed, false);
        match b {
            b'"' if in_quotes => (in_quotes, closed) = (false, true),
            // `""` inside a quoted field is an escaped quote: the field goes on.
            b'"' if starts || after_close => (in_quotes, empty, blank) = (true, false, false),
            b'\n' if !in_quotes => {
                if record > 0 && long(fields, blank) {
                    return Some((record, fields));
                }
                record += 1;
                (fields, empty, field_start, blank) = (1, true, true, true);
            }
            b'\r' if !in_quotes => field_start = starts,
            _ if b == sep && !in_quotes => {
                fields += 1;
                (empty, field_start, blank) = (false, true, true);
            }
            b' ' | b'\t' if !in_quotes => empty = false,
            _ => (empty, blank) = (false, false),
        }
    }
    (!empty && record > 0 && long(fields, blank)).then_some((record, fields))
}

/// Maps a csv/parquet frame onto the fixed layout, checking every column.
fn mapped_frame(file: &str, df: DataFrame, cfg: &DataConfig) -> Result<DataFrame> {
    let n = df.height();
    if n == 0 {
        return Err(DataError::bad_input(
            file,
            None,
            None,
            "the file holds no rows",
        ));
    }
    let get = |name: &str| -> Result<&Column> {
        df.column(name).map_err(|_| {
            let have: Vec<String> = df
                .get_column_names()
                .iter()
                .map(|s| s.to_string())
                .collect();
            DataError::bad_input(
                file,
                None,
                Some(name),
                format!("column not found; the file has {have:?}"),
            )
        })
    };
    let c = &cfg.source.columns;
    let mut cols = Vec::with_capacity(5);
    for (role, name) in [("user", &c.user), ("item", &c.item)] {
        let col = get(name)?;
        cols.push(id_column(file, name, col)?.with_name(role.into()));
    }
    cols.push(match &c.timestamp {
        Some(name) => timestamp_column(file, name, get(name)?)?,
        None => Column::full_null("ts".into(), n, &DataType::Int64),
    });
    cols.push(match &c.rating {
        Some(name) => rating_column(file, name, get(name)?)?,
        None => Column::full_null("rating".into(), n, &DataType::Float64),
    });
    cols.push(Column::new(
        "order".into(),
        (0..n as i64).collect::<Vec<_>>(),
    ));
    DataFrame::new(n, cols).map_err(polars_err("assembling the source frame"))
}

fn first_null_row(col: &Column) -> Option<u64> {
    if col.null_count() == 0 {
        return None;
    }
    let mask = col.is_null();
    mask.iter()
        .position(|v| v == Some(true))
        .map(|p| p as u64 + 1)
}

fn id_column(file: &str, name: &str, col: &Column) -> Result<Column> {
    if let Some(row) = first_null_row(col) {
        return Err(DataError::bad_input(
            file,
            Some(row),
            Some(name),
            "missing id",
        ));
    }
    match col.dtype() {
        DataType::String => {
            // An empty (or blank) text is no id, as an empty CSV field is none.
            let text = col.str().map_err(polars_err("reading ids"))?;
            match text
                .iter()
                .position(|v| v.is_some_and(|s| s.trim().is_empty()))
            {
                Some(row) => Err(DataError::bad_input(
                    file,
                    Some(row as u64 + 1),
                    Some(name),
                    "missing id (empty text)",
                )),
                None => without_spaces_around(file, name, col),
            }
        }
        // Integer ids beyond i64 (large uint64 values) are kept as their decimal text: a
        // plain cast would turn them into nulls and drop their rows.
        dt if dt.is_integer() => col
            .strict_cast(&DataType::Int64)
            .or_else(|_| col.cast(&DataType::String))
            .map_err(polars_err("casting ids")),
        other => Err(DataError::bad_input(
            file,
            Some(1),
            Some(name),
            format!("ids must be integers or strings, found {other}"),
        )),
    }
}

/// 9999-12-31T23:59:59Z: the last second a timestamp may name.
const LAST_SECOND: i64 = 253_402_300_799;

/// Why `t` (seconds since 1970) cannot be a timestamp: past the year 9999, milliseconds or
/// finer read as seconds. `None` when it can.
pub(crate) fn past_last_second(t: i64) -> Option<String> {
    (t > LAST_SECOND).then(|| {
        format!(
            "timestamp {t} is past the year 9999 as seconds since 1970: milliseconds or \
             finer? Timestamps are integer seconds (divide by 1000 for milliseconds) or \
             ISO-8601 text"
        )
    })
}

fn timestamp_column(file: &str, name: &str, col: &Column) -> Result<Column> {
    if let Some(row) = first_null_row(col) {
        return Err(DataError::bad_input(
            file,
            Some(row),
            Some(name),
            "missing timestamp",
        ));
    }
    let ts: Column = match col.dtype() {
        dt if dt.is_integer() => {
            let ts = col
                .cast(&DataType::Int64)
                .map_err(polars_err("casting timestamps"))?;
            // A value beyond i64 (a large uint64) casts to null: name it, as a missing one.
            if let Some(row) = first_null_row(&ts) {
                return Err(DataError::bad_input(
                    file,
                    Some(row),
                    Some(name),
                    "timestamp beyond the 64-bit signed range of seconds",
                ));
            }
            ts
        }
        DataType::String => {
            let ca = col.str().map_err(polars_err("reading timestamps"))?;
            let mut out = Vec::with_capacity(ca.len());
            for (i, v) in ca.iter().enumerate() {
                let s = v.unwrap_or("");
                let t = parse_timestamp(s).ok_or_else(|| {
                    DataError::bad_input(
                        file,
                        Some(i as u64 + 1),
                        Some(name),
                        format!(
                            "cannot parse {s:?} as a timestamp (integer seconds or ISO-8601 like 2024-05-01T12:00:00Z)"
                        ),
                    )
                })?;
                out.push(t);
            }
            Column::new("ts".into(), out)
        }
        // Parquet datetimes (what pandas writes) and dates, to seconds.
        dt @ (DataType::Datetime(..) | DataType::Date) => {
            let to_seconds = |t: i64| match dt {
                DataType::Datetime(TimeUnit::Milliseconds, _) => t.div_euclid(1_000),
                DataType::Datetime(TimeUnit::Microseconds, _) => t.div_euclid(1_000_000),
                DataType::Datetime(TimeUnit::Nanoseconds, _) => t.div_euclid(1_000_000_000),
                _ => t * 86_400, // days
            };
            let ticks = col
                .to_physical_repr()
                .cast(&DataType::Int64)
                .map_err(polars_err("casting timestamps"))?;
            let ca = ticks.i64().map_err(polars_err("reading timestamps"))?;
            Column::new(
                "ts".into(),
                ca.iter().map(|v| v.map(to_seconds)).collect::<Vec<_>>(),
            )
        }
        // Floats (a column with a decimal somewhere): whole values are seconds; the first
        // other one is named with its row.
        dt if dt.is_float() => {
            let f = col
                .cast(&DataType::Float64)
                .map_err(polars_err("casting timestamps"))?;
            let ca = f.f64().map_err(polars_err("reading timestamps"))?;
            let mut out = Vec::with_capacity(ca.len());
            for (i, v) in ca.iter().enumerate() {
                let v = v.unwrap_or(f64::NAN);
                if v.fract() != 0.0 || !v.is_finite() || v.abs() > 9.2e18 {
                    return Err(DataError::bad_input(
                        file,
                        Some(i as u64 + 1),
                        Some(name),
                        format!("timestamps must be integer seconds or ISO-8601 text, got {v}"),
                    ));
                }
                out.push(v as i64);
            }
            Column::new("ts".into(), out)
        }
        other => {
            return Err(DataError::bad_input(
                file,
                Some(1),
                Some(name),
                format!(
                    "timestamps must be integer seconds, datetimes, dates or ISO-8601 text, \
                     found {other}"
                ),
            ));
        }
    };
    let ca = ts.i64().map_err(polars_err("reading timestamps"))?;
    if let Some(pos) = ca.iter().position(|v| v.is_some_and(|t| t < 0)) {
        return Err(DataError::bad_input(
            file,
            Some(pos as u64 + 1),
            Some(name),
            format!("negative timestamp {}", ca.get(pos).unwrap_or_default()),
        ));
    }
    // Milliseconds (or finer) read as seconds land thousands of years ahead: refused, not kept.
    if let Some((pos, why)) = ca
        .iter()
        .enumerate()
        .find_map(|(i, v)| Some((i, past_last_second(v?)?)))
    {
        return Err(DataError::bad_input(
            file,
            Some(pos as u64 + 1),
            Some(name),
            why,
        ));
    }
    Ok(ts.with_name("ts".into()))
}

/// Integer seconds, RFC 3339, or naive ISO-8601 date/datetime (read as UTC).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<i64>() {
        return Some(v);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp());
    }
    // Offsets as Python's `%z` writes them (+0100), and `Z` after a time without seconds.
    let zoned = match s.strip_suffix(['Z', 'z']) {
        Some(rest) => format!("{rest}+0000"),
        None => s.to_owned(),
    };
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%z",
        "%Y-%m-%d %H:%M%z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(&zoned, fmt) {
            return Some(dt.timestamp());
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(dt.and_utc().timestamp());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp())
}

fn rating_column(file: &str, name: &str, col: &Column) -> Result<Column> {
    if let Some(row) = first_null_row(col) {
        return Err(DataError::bad_input(
            file,
            Some(row),
            Some(name),
            "missing rating",
        ));
    }
    match col.dtype() {
        dt if dt.is_primitive_numeric() => {
            let r = col
                .cast(&DataType::Float64)
                .map_err(polars_err("casting ratings"))?
                .with_name("rating".into());
            // NaN is no rating (it would pass every `min_rating` comparison as kept).
            let values = r.f64().map_err(polars_err("reading ratings"))?;
            if let Some(row) = values
                .iter()
                .position(|v| v.is_some_and(|v| !v.is_finite()))
            {
                let v = values.get(row).unwrap_or(f64::NAN);
                return Err(DataError::bad_input(
                    file,
                    Some(row as u64 + 1),
                    Some(name),
                    format!("rating must be a finite number, got {v}"),
                ));
            }
            Ok(r)
        }
        DataType::String => {
            let ca = col.str().map_err(polars_err("reading ratings"))?;
            let mut out = Vec::with_capacity(ca.len());
            for (i, v) in ca.iter().enumerate() {
                let s = v.unwrap_or("");
                let r = s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite())
                    .ok_or_else(|| {
                        DataError::bad_input(
                            file,
                            Some(i as u64 + 1),
                            Some(name),
                            format!("rating must be numeric, got {s:?}"),
                        )
                    })?;
                out.push(r);
            }
            Ok(Column::new("rating".into(), out))
        }
        other => Err(DataError::bad_input(
            file,
            Some(1),
            Some(name),
            format!("rating must be numeric, found {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_long_row_is_found_as_the_reader_splits_fields() {
        let long = |csv: &str| first_long_row(csv.as_bytes(), b',', 2);
        assert_eq!(long("a,b\n1,2\n3,4,5\n"), Some((2, 3)));
        assert_eq!(long("a,b\n1,2\n"), None);
        // A quote inside a field is text, not the start of a quoted field.
        assert_eq!(long("a,b\n12\" vinyl,x\n1,2,3\n"), Some((2, 3)));
        // Quoted fields hold delimiters, escaped quotes and line breaks.
        assert_eq!(long("a,b\n\"x \"\"y\"\", z\",1\n1,2,3\n"), Some((2, 3)));
        assert_eq!(long("a,b\n\"line\nbreak, on\",1\n1,2,3\n"), Some((2, 3)));
        // A blank line is a row; CRLF ends lines; the last line needs no line break.
        assert_eq!(long("a,b\r\n1,2\r\n\r\n1,2,3"), Some((3, 3)));
        assert_eq!(long("a,b\r\n1,2\r\n1,2\r\n"), None);
        // One blank field past the width is a trailing delimiter, as the reader takes it.
        assert_eq!(long("a,b\n1,2,\n1,2, \r\n1,2,"), None);
        assert_eq!(long("a,b\n1,2,\n1,2,,\n"), Some((2, 4)));
        assert_eq!(long("a,b\n1,2, x\n"), Some((1, 3)));
    }

    #[test]
    fn timestamps_parse_in_all_documented_forms() {
        assert_eq!(parse_timestamp("978300760"), Some(978300760));
        assert_eq!(parse_timestamp("1970-01-02T00:00:00Z"), Some(86400));
        assert_eq!(parse_timestamp("1970-01-02T01:00:00+01:00"), Some(86400));
        assert_eq!(parse_timestamp("1970-01-02 00:00:01"), Some(86401));
        assert_eq!(parse_timestamp("1970-01-03"), Some(2 * 86400));
        assert_eq!(parse_timestamp("yesterday"), None);
        // Python's strftime('%z') offsets, and minutes with a zone.
        assert_eq!(parse_timestamp("1970-01-02T01:00:00+0100"), Some(86400));
        assert_eq!(parse_timestamp("1970-01-02 01:00:00.5+0100"), Some(86400));
        assert_eq!(parse_timestamp("1970-01-02T00:01Z"), Some(86460));
        assert_eq!(parse_timestamp("1970-01-02T01:01+01:00"), Some(86460));
    }
}
