//! The error type of `yaqa-model`: every variant names the file (and tensor) a person has to look at.

use std::path::PathBuf;

use thiserror::Error;

/// Errors raised while reading or writing checkpoints, tokenizing, or running the model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written; `path` is the file the user asked for, never the temporary file
    /// it is written through.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A folder where a file was expected (memory-mapping one fails with a bare "No such device").
    #[error("{path} is a folder, expected a file")]
    NotAFile { path: PathBuf },
    /// A tensor of a checkpoint holds infinities or NaNs, which every later stage would carry into
    /// NaN perplexities and meaningless factors instead of failing.
    #[error(
        "{path}: tensor {tensor}: {count} of {len} values are not finite (the first, {first}, at \
         index {index}); the checkpoint is damaged"
    )]
    NonFinite {
        path: PathBuf,
        tensor: String,
        count: usize,
        len: usize,
        first: f32,
        index: usize,
    },
    /// A checkpoint holding decoder blocks beyond the number its configuration declares: the model
    /// would run without them, silently.
    #[error(
        "{path}: holds {present} decoder blocks ({tensor} is in the last), but {key} declares \
         {declared}: fix the configuration or remove the extra blocks"
    )]
    ExtraBlocks {
        path: PathBuf,
        tensor: String,
        present: usize,
        declared: usize,
        key: String,
    },
    /// The file ends before a header field or a tensor's data does.
    #[error("{path}: truncated file: {what} needs bytes {start}..{end} but the file has {len}")]
    Truncated {
        path: PathBuf,
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },
    /// The file is not of the expected format (bad magic, unsupported version, malformed header).
    #[error("{path}: bad format: {why}")]
    BadFormat { path: PathBuf, why: String },
    /// A tensor element type this reader cannot dequantize.
    #[error("{path}: tensor {tensor}: unsupported dtype {dtype}")]
    UnknownDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("{path}: missing tensor {tensor}")]
    MissingTensor { path: PathBuf, tensor: String },
    /// A tensor whose shape disagrees with the configuration.
    #[error("{path}: tensor {tensor}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A model family (or a feature of one) this crate does not run.
    #[error("{path}: unsupported architecture {arch}: {why}")]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        why: String,
    },
    /// A configuration value that is missing or out of range.
    #[error("{path}: config: {why}")]
    Config { path: PathBuf, why: String },
    /// The tokenizer library refused the file or the text.
    #[error("{path}: tokenizer: {why}")]
    Tokenizer { path: PathBuf, why: String },
    /// A layer or tensor that a file is valid for but an export format cannot hold (a rotated layer
    /// for GPTQ, a zero-point it has no encoding for).
    #[error("{path}: {layer} cannot be written as {format}: {why}")]
    NotExportable {
        path: PathBuf,
        layer: String,
        format: &'static str,
        why: String,
    },
    /// Bad arguments to a model computation (token ids out of range, ragged batches).
    #[error("invalid input: {0}")]
    Input(String),
    /// A numerical error from the core operations.
    #[error(transparent)]
    Core(#[from] yaqa_core::CoreError),
    /// A job refused its configuration or inputs before or while working (flags that contradict each
    /// other, factor files of another model, a folder that is not what the flag needs); the message
    /// names the flag, file or layer.
    #[error("{0}")]
    Refused(String),
    /// A job stopped where its configuration asked it to (`stop_after_seqs`, `stop_after_layers`),
    /// leaving exactly what a killed run leaves; running it again resumes.
    #[error("stopped {0} as asked; rerun the same command to resume")]
    Stopped(String),
    /// An error with what was being done when it happened, outermost first in the message.
    #[error("{context}: {inner}")]
    Context {
        context: String,
        inner: Box<ModelError>,
    },
}

/// Result alias for the crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`ModelError::BadFormat`] for `path`.
    pub fn format(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Self::BadFormat {
            path: path.into(),
            why: why.into(),
        }
    }
}

/// Adds what was being done to an error, as `anyhow`'s `context` does, keeping it a [`ModelError`].
pub trait Context<T> {
    /// Prefixes the error (or the absence of a value) with `context`.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// [`Context::context`] with a message built only on error.
    fn with_context<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<ModelError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| ModelError::Context {
            context: context.into(),
            inner: Box::new(e.into()),
        })
    }

    fn with_context<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| ModelError::Context {
            context: context().into(),
            inner: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| ModelError::Refused(context.into()))
    }

    fn with_context<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| ModelError::Refused(context().into()))
    }
}

impl ModelError {
    /// Whether this is (or wraps) [`ModelError::Stopped`]: a run that stopped as asked.
    pub fn is_stopped(&self) -> bool {
        match self {
            ModelError::Stopped(_) => true,
            ModelError::Context { inner, .. } => inner.is_stopped(),
            _ => false,
        }
    }
}

/// Returns early with a [`ModelError::Refused`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::ModelError::Refused(format!($($arg)*)))
    };
}
