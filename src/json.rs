//! Reading a checkpoint's JSON files, with errors that name the file.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

pub(crate) fn read(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    serde_json::from_str(&text).map_err(|cause| Error::Json {
        path: path.to_path_buf(),
        cause,
    })
}
