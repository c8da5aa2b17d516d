//! The one error type of the library: every variant names the file, field or tensor at fault.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while loading a checkpoint or running it.
///
/// Each variant renders as one sentence that names what is wrong and where, so that the
/// command line can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The causes are part of the message rather than a `source`, so that printing the error
    // with its source chain does not repeat them.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{path}: not valid JSON: {cause}")]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },

    /// A config.json field that is missing, mistyped, out of range or not supported.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// A safetensors file that cannot be read as one (truncated, not safetensors, bad header).
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    /// A GGUF file that cannot be read as one, or that lacks what a model needs.
    #[error("{path}: {message}")]
    Gguf { path: PathBuf, message: String },

    /// A checkpoint whose files disagree: a tensor in two shards, an index naming a shard
    /// that does not hold the tensor.
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("{dir}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor { dir: PathBuf, name: String },

    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("{path}: tensor `{name}` has dtype {dtype}, expected F32, BF16 or F16")]
    TensorDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    /// A chat template that does not parse, or fails (or refuses the conversation) when run.
    #[error("{path}: {message}")]
    Template { path: PathBuf, message: String },

    /// A hub id that is neither in the local HF cache nor downloadable.
    #[error("{id}: {message} (hub cache {cache})")]
    Hub {
        id: String,
        cache: PathBuf,
        message: String,
    },

    /// Bad input from the caller: a token out of range, an empty prompt, a full context.
    #[error("{0}")]
    Input(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Fails unless `dir` is a folder: the first check when loading a model from it.
    pub(crate) fn check_model_dir(dir: &Path) -> Result<()> {
        if dir.as_os_str().is_empty() {
            return Err(Error::Input(
                "the model name is empty: expected a model folder, a GGUF file or a hub id \
                 (org/name)"
                    .into(),
            ));
        }
        let message = match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(meta) => format!(
                "is {}, not a model folder (config.json with safetensors) or a GGUF file",
                file_kind(&meta)
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no such model folder".into(),
            Err(e) => e.to_string(),
        };
        Err(Error::Input(format!(
            "{}: {message}",
            shortened(&dir.display().to_string())
        )))
    }

    pub(crate) fn config(path: &Path, field: &str, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// What a path that is not the regular file or folder expected is, for messages: "a folder",
/// "a FIFO", "a character device"...
pub(crate) fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
    }
    if kind.is_dir() {
        "a folder"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Text from the caller (a model name, a hub id) as echoed in a message: whole up to 200
/// characters, else its start and its length, so that a hostile 5000-character name makes a
/// one-line error still.
pub(crate) fn shortened(text: &str) -> String {
    const SHOWN: usize = 200;
    let count = text.chars().count();
    if count <= SHOWN {
        return text.to_string();
    }
    let start: String = text.chars().take(60).collect();
    format!("{start}… ({count} characters)")
}

/// A message from a library that may quote input at length (serde quoting a string value):
/// its start and end (where a line and column are) around an ellipsis past 400 characters.
pub(crate) fn clipped(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    if chars.len() <= 400 {
        return message.to_string();
    }
    let head: String = chars[..200].iter().collect();
    let tail: String = chars[chars.len() - 150..].iter().collect();
    format!("{head} … {tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_echoed_shortened() {
        assert_eq!(shortened("org/name"), "org/name");
        let long = "a".repeat(5000);
        let short = shortened(&long);
        assert!(
            short.len() < 100 && short.ends_with("(5000 characters)"),
            "{short}"
        );
    }

    #[test]
    fn a_model_folder_that_is_empty_or_a_file_is_said_so() {
        let e = Error::check_model_dir(Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the model name is empty"), "{e}");
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let e = Error::check_model_dir(&file).unwrap_err().to_string();
        assert!(e.contains("is a regular file, not a model folder"), "{e}");
    }
}
