//! The plan format: what a data loader writes to `<mount>/.torchfs/plan` to
//! declare the reads of one rank for one epoch, and its parser.
//!
//! Version 1 is line-oriented UTF-8 text, so that any language (and a shell
//! `printf`) can write it and a person can read it:
//!
//! ```text
//! torchfs-plan 1
//! epoch 3
//! rank 0
//! items 3
//!
//! train/000017.jpg
//! train/000002.jpg
//! shards/big-0.bin<TAB>1048576<TAB>1048576
//! ```
//!
//! (`<TAB>` stands for one TAB character.)
//!
//! - Line 1 is the magic and the format version.
//! - Header lines `KEY VALUE` follow, then one empty line. Keys: `epoch`
//!   (u64), `rank` (u32) and `items` (the number of item lines, u64), all
//!   three required, each once. Unknown keys are refused: a newer writer's
//!   meaning must not be silently dropped (it bumps the version instead).
//! - Then exactly `items` item lines, in the order they will be read. An item
//!   is a path relative to the mount root (a leading `/` is allowed), or a
//!   path, a TAB, a byte offset, a TAB and a length (> 0): a byte range of
//!   the file. Path components must be non-empty and not `.` or `..`.
//!   `%`, TAB, LF and CR inside a path are written `%25`, `%09`, `%0A`,
//!   `%0D`; no other escapes exist. The last line may end with LF or not.
//!
//! `items` is required so that a plan cut short (a writer killed mid-write
//! still closes its file, which submits it) is refused instead of being
//! taken as a shorter epoch. A plan that fails to parse changes nothing.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use torchfs_proto::meta::NAME_BYTES_MAX;

/// First line of every plan, before the version.
pub const PLAN_MAGIC: &str = "torchfs-plan";
/// The format version this client writes and reads.
pub const PLAN_VERSION: u32 = 1;
/// Largest plan accepted (bytes written to `.torchfs/plan` in one open).
pub const PLAN_BYTES_MAX: usize = 256 << 20;
/// Most items one plan may hold (bounds the client's memory per plan).
pub const PLAN_ITEMS_MAX: u64 = 1 << 23;
/// Longest path accepted, as PATH_MAX on Linux.
const PATH_BYTES_MAX: usize = 4096;

/// Why a plan was refused; the front-end answers EINVAL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan is not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("plan is empty")]
    Empty,
    #[error("line 1 must be `{PLAN_MAGIC} {PLAN_VERSION}`, found {found:?}")]
    BadMagic { found: String },
    #[error("plan format version {version:?} is not supported (this client reads version {PLAN_VERSION})")]
    Version { version: String },
    #[error("line {line}: {reason}")]
    Header { line: usize, reason: String },
    #[error("header `{key}` is missing")]
    MissingHeader { key: &'static str },
    #[error("line {line} (item {index}): {reason}")]
    Item {
        line: usize,
        index: u64,
        reason: String,
    },
    #[error("header declares {declared} items but the plan has {found}")]
    ItemCount { declared: u64, found: u64 },
    #[error("{items} items is more than the {max} a plan may hold")]
    TooManyItems { items: u64, max: u64 },
    #[error("plan of at least {bytes} bytes is larger than the {max}-byte limit")]
    TooLarge { bytes: u64, max: u64 },
}

/// A byte range of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub offset: u64,
    pub len_bytes: u64,
}

/// One planned read: a whole file, or a byte range of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanItem {
    /// Path relative to the mount root, components joined by `/`. Shared
    /// between items naming the same file (chunks of one big file).
    pub path: Arc<str>,
    pub range: Option<ByteRange>,
}

/// A parsed plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub epoch: u64,
    pub rank: u32,
    pub items: Vec<PlanItem>,
    /// Hash of the items, to recognise a plan published twice.
    pub digest: u64,
}

/// Escapes a path for an item line (the inverse of the parser's decoding).
pub fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\t' => out.push_str("%09"),
            '\n' => out.push_str("%0A"),
            '\r' => out.push_str("%0D"),
            c => out.push(c),
        }
    }
    out
}

/// Renders a plan in format version 1 (used by tests and the benchmark;
/// the Python package has its own writer of the same format).
pub fn render_plan(epoch: u64, rank: u32, items: &[(String, Option<ByteRange>)]) -> String {
    let mut out = format!(
        "{PLAN_MAGIC} {PLAN_VERSION}\nepoch {epoch}\nrank {rank}\nitems {}\n\n",
        items.len()
    );
    for (path, range) in items {
        out.push_str(&escape_path(path));
        if let Some(r) = range {
            out.push_str(&format!("\t{}\t{}", r.offset, r.len_bytes));
        }
        out.push('\n');
    }
    out
}

/// Parses a whole plan. Nothing is resolved here (paths stay paths): that
/// needs metadata calls and happens after the plan is accepted.
pub fn parse_plan(bytes: &[u8]) -> Result<Plan, PlanError> {
    if bytes.len() > PLAN_BYTES_MAX {
        return Err(PlanError::TooLarge {
            bytes: bytes.len() as u64,
            max: PLAN_BYTES_MAX as u64,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| PlanError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if text.is_empty() {
        return Err(PlanError::Empty);
    }
    // A final LF ends the last line; it does not start an empty one.
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = body.split('\n').enumerate().map(|(i, l)| (i + 1, l));

    let (_, first) = lines.next().ok_or(PlanError::Empty)?;
    match first.split_once(' ') {
        Some((PLAN_MAGIC, v)) if v == PLAN_VERSION.to_string() => {}
        Some((PLAN_MAGIC, v)) => {
            return Err(PlanError::Version {
                version: v.to_string(),
            })
        }
        _ => {
            return Err(PlanError::BadMagic {
                found: first.chars().take(40).collect(),
            })
        }
    }

    let (mut epoch, mut rank, mut declared) = (None, None, None);
    loop {
        let Some((line, text)) = lines.next() else {
            return Err(PlanError::Header {
                line: 0,
                reason: "the plan ends before the empty line that closes the header".into(),
            });
        };
        if text.is_empty() {
            break;
        }
        let header = |reason: String| PlanError::Header { line, reason };
        let (key, value) = text
            .split_once(' ')
            .ok_or_else(|| header(format!("expected `KEY VALUE`, found {text:?}")))?;
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| header(format!("{what} {value:?} is not a non-negative integer")))
        };
        let slot = match key {
            "epoch" => &mut epoch,
            "rank" => &mut rank,
            "items" => &mut declared,
            other => return Err(header(format!("unknown header `{other}`"))),
        };
        if slot.is_some() {
            return Err(header(format!("header `{key}` given twice")));
        }
        *slot = Some(number(key)?);
    }
    let epoch = epoch.ok_or(PlanError::MissingHeader { key: "epoch" })?;
    let rank = rank.ok_or(PlanError::MissingHeader { key: "rank" })?;
    let rank = u32::try_from(rank).map_err(|_| PlanError::Header {
        line: 0,
        reason: format!("rank {rank} does not fit in 32 bits"),
    })?;
    let declared = declared.ok_or(PlanError::MissingHeader { key: "items" })?;
    if declared > PLAN_ITEMS_MAX {
        return Err(PlanError::TooManyItems {
            items: declared,
            max: PLAN_ITEMS_MAX,
        });
    }

    let mut interned: HashMap<String, Arc<str>> = HashMap::new();
    let mut items = Vec::with_capacity(declared.min(1 << 20) as usize);
    let mut hasher = std::hash::DefaultHasher::new();
    for (line, text) in lines {
        let index = items.len() as u64;
        if index >= declared {
            // Count the rest only to say how many there were.
            let extra = 1 + body.split('\n').skip(line).count() as u64;
            return Err(PlanError::ItemCount {
                declared,
                found: declared + extra,
            });
        }
        let item = parse_item(text, &mut interned).map_err(|reason| PlanError::Item {
            line,
            index,
            reason,
        })?;
        item.path.hash(&mut hasher);
        item.range.hash(&mut hasher);
        items.push(item);
    }
    if (items.len() as u64) != declared {
        return Err(PlanError::ItemCount {
            declared,
            found: items.len() as u64,
        });
    }
    Ok(Plan {
        epoch,
        rank,
        items,
        digest: hasher.finish(),
    })
}

fn parse_item(text: &str, interned: &mut HashMap<String, Arc<str>>) -> Result<PlanItem, String> {
    let mut fields = text.split('\t');
    let raw_path = fields.next().unwrap_or_default();
    let range = match (fields.next(), fields.next(), fields.next()) {
        (None, _, _) => None,
        (Some(offset), Some(len), None) => {
            let offset: u64 = offset
                .parse()
                .map_err(|_| format!("offset {offset:?} is not a non-negative integer"))?;
            let len_bytes: u64 = len
                .parse()
                .map_err(|_| format!("length {len:?} is not a positive integer"))?;
            if len_bytes == 0 {
                return Err("a byte range must not be empty (length 0)".into());
            }
            if offset.checked_add(len_bytes).is_none() {
                return Err(format!(
                    "range {offset} + {len_bytes} is past the largest file offset"
                ));
            }
            Some(ByteRange { offset, len_bytes })
        }
        _ => {
            return Err("expected PATH or PATH<TAB>OFFSET<TAB>LENGTH".into());
        }
    };
    let path = decode_path(raw_path)?;
    let path = match interned.get(path.as_str()) {
        Some(p) => p.clone(),
        None => {
            let p: Arc<str> = Arc::from(path.as_str());
            interned.insert(path, p.clone());
            p
        }
    };
    Ok(PlanItem { path, range })
}

/// Decodes `%XX` escapes and checks the path's shape; returns it without a
/// leading `/`.
fn decode_path(raw: &str) -> Result<String, String> {
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    if raw.is_empty() {
        return Err("empty path".into());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3).unwrap_or("");
        let c = match code {
            "25" => '%',
            "09" => '\t',
            "0A" | "0a" => '\n',
            "0D" | "0d" => '\r',
            _ => return Err(format!("bad escape `%{code}` (only %25 %09 %0A %0D exist)")),
        };
        out.push(c);
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    if out.len() > PATH_BYTES_MAX {
        return Err(format!(
            "path of {} bytes is longer than {PATH_BYTES_MAX}",
            out.len()
        ));
    }
    for component in out.split('/') {
        match component {
            "" => return Err(format!("path {out:?} has an empty component")),
            "." | ".." => return Err(format!("path {out:?} has a `{component}` component")),
            c if c.len() > NAME_BYTES_MAX => {
                return Err(format!(
                    "component of {} bytes is longer than {NAME_BYTES_MAX}",
                    c.len()
                ))
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Plan {
        parse_plan(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
    }

    fn err(text: &str) -> PlanError {
        match parse_plan(text.as_bytes()) {
            Ok(p) => panic!("accepted {text:?} as {p:?}"),
            Err(e) => e,
        }
    }

    const HEAD: &str = "torchfs-plan 1\nepoch 3\nrank 2\n";

    #[test]
    fn parses_files_and_ranges() {
        let p = ok(&format!(
            "{HEAD}items 3\n\n/a/b.jpg\nbig.bin\t0\t4096\nbig.bin\t4096\t10"
        ));
        assert_eq!((p.epoch, p.rank), (3, 2));
        assert_eq!(&*p.items[0].path, "a/b.jpg");
        assert_eq!(p.items[0].range, None);
        assert_eq!(
            p.items[2].range,
            Some(ByteRange {
                offset: 4096,
                len_bytes: 10
            })
        );
        assert!(
            Arc::ptr_eq(&p.items[1].path, &p.items[2].path),
            "one path shared by the chunks of a file"
        );
        // Header order is free; trailing LF optional.
        let q = ok("torchfs-plan 1\nitems 1\nrank 2\nepoch 3\n\nx\n");
        assert_eq!(q.items.len(), 1);
        // An empty epoch is a valid plan.
        assert!(ok(&format!("{HEAD}items 0\n\n")).items.is_empty());
    }

    #[test]
    fn render_and_parse_round_trip_with_escapes() {
        let names = [
            "plain",
            "with space",
            "tab\there",
            "nl\nx",
            "pct%41",
            "cr\r",
        ];
        let items: Vec<(String, Option<ByteRange>)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let range = (i % 2 == 1).then_some(ByteRange {
                    offset: i as u64 * 7,
                    len_bytes: 5,
                });
                (format!("d/{n}"), range)
            })
            .collect();
        let text = render_plan(9, 1, &items);
        let p = ok(&text);
        assert_eq!(p.items.len(), names.len());
        for (item, (path, range)) in p.items.iter().zip(&items) {
            assert_eq!(&*item.path, path.as_str());
            assert_eq!(item.range, *range);
        }
        assert_eq!(p.digest, ok(&text).digest);
        let other = render_plan(9, 1, &items[1..]);
        assert_ne!(p.digest, ok(&other).digest);
    }

    #[test]
    fn rejects_malformed_plans_with_reasons() {
        assert_eq!(err(""), PlanError::Empty);
        assert!(matches!(err("hello\n"), PlanError::BadMagic { .. }));
        assert!(matches!(err("torchfs-plan 2\n"), PlanError::Version { .. }));
        assert!(matches!(
            parse_plan(b"torchfs-plan 1\n\xff"),
            Err(PlanError::NotUtf8 { offset: 15 })
        ));
        assert_eq!(
            err("torchfs-plan 1\nrank 0\nitems 0\n\n"),
            PlanError::MissingHeader { key: "epoch" }
        );
        assert_eq!(
            err(&format!("{HEAD}\n")),
            PlanError::MissingHeader { key: "items" }
        );
        let cases = [
            (
                format!("{HEAD}items 1\ncolour red\n\nx\n"),
                "unknown header",
            ),
            (format!("{HEAD}items 1\nepoch 4\n\nx\n"), "given twice"),
            (format!("{HEAD}items x\n\n"), "not a non-negative"),
            (format!("{HEAD}items 1\nnospace\n\nx\n"), "KEY VALUE"),
            (format!("{HEAD}items 1\n"), "ends before"),
            (
                "torchfs-plan 1\nepoch 1\nrank 99999999999\nitems 0\n\n".into(),
                "32 bits",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text).to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        let items = [
            ("", "empty path"),
            ("/", "empty path"),
            ("a//b", "empty component"),
            ("a/../b", "`..`"),
            ("./a", "`.`"),
            ("a\t1", "PATH<TAB>"),
            ("a\t1\t2\t3", "PATH<TAB>"),
            ("a\tx\t2", "offset"),
            ("a\t0\t0", "must not be empty"),
            ("a\t0\t-1", "length"),
            ("a%zz", "bad escape"),
            ("a%2", "bad escape"),
        ];
        for (item, want) in items {
            let e = err(&format!("{HEAD}items 1\n\n{item}\n"));
            assert!(
                matches!(
                    e,
                    PlanError::Item {
                        line: 6,
                        index: 0,
                        ..
                    }
                ),
                "{item:?}: {e:?}"
            );
            assert!(e.to_string().contains(want), "{item:?}: {e} lacks {want:?}");
        }
        let long = "x".repeat(NAME_BYTES_MAX + 1);
        assert!(err(&format!("{HEAD}items 1\n\n{long}\n"))
            .to_string()
            .contains("longer than"));
        let range_overflow = format!("{HEAD}items 1\n\na\t{}\t2\n", u64::MAX);
        assert!(err(&range_overflow)
            .to_string()
            .contains("past the largest"));
    }

    #[test]
    fn item_count_must_match() {
        assert_eq!(
            err(&format!("{HEAD}items 3\n\na\nb\n")),
            PlanError::ItemCount {
                declared: 3,
                found: 2
            }
        );
        assert_eq!(
            err(&format!("{HEAD}items 1\n\na\nb\nc\n")),
            PlanError::ItemCount {
                declared: 1,
                found: 3
            }
        );
        // A blank line among the items is an empty path, not an end.
        assert!(matches!(
            err(&format!("{HEAD}items 2\n\na\n\nb\n")),
            PlanError::Item { index: 1, .. }
        ));
        assert!(matches!(
            err(&format!("{HEAD}items {}\n\n", PLAN_ITEMS_MAX + 1)),
            PlanError::TooManyItems { .. }
        ));
    }
}
