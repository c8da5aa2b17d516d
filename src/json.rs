//! Reading a checkpoint's JSON files, with errors that name the file.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Reads and parses the JSON file at `path`: a regular file (a FIFO or a device would block or
/// never end) of at most `Limits::max_json_bytes`, checked before it is read.
pub(crate) fn read(path: &Path) -> Result<Value> {
    parse(path, &read_text(path)?)
}

/// The text of the JSON file at `path`, under the checks of [`read`], for readers that parse
/// it into their own types (tokenizer.json).
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let io = |cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let bad = |message: String| Error::Input(format!("{}: {message}", path.display()));
    if !meta.is_file() {
        return Err(bad(format!(
            "is not a regular file ({}); expected a JSON file",
            crate::error::file_kind(&meta)
        )));
    }
    let max = crate::Limits::current().max_json_bytes;
    if meta.len() > max {
        return Err(bad(format!(
            "is {} bytes, more than the {max} a JSON file may have (Limits::max_json_bytes)",
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Parses `text`, read from `path`; a syntax error names the line and column.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|cause| Error::Json {
        path: path.to_path_buf(),
        cause,
    })
}
