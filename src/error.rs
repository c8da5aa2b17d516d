//! The one error type of the library: every variant names the file, field or tensor at fault.

use std::path::PathBuf;

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
    pub(crate) fn check_model_dir(dir: &std::path::Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        Err(Error::Io {
            path: dir.to_path_buf(),
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model folder"),
        })
    }

    pub(crate) fn config(path: &std::path::Path, field: &str, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}
