//! Logical export of tabletdb databases as scripts other systems load: SQL for PostgreSQL
//! (`CREATE TABLE` + `COPY … FROM stdin` or batched `INSERT`s) and CQL. An export is a
//! consistent cut: every table is read at one hybrid time, tablets in parallel, streaming,
//! so memory stays bounded whatever the size.

pub mod export;
pub mod import;
pub mod quote;
pub mod script;

pub use export::{export, ExportOptions, ExportReport, Format};

/// Errors of export and import.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] snapfleet_tabletdb::Error),
    #[error("writing the script failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The script is malformed or unsupported at `line`; nothing was changed.
    #[error("line {line}: {message}")]
    Script { line: usize, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<script::ScriptError> for Error {
    fn from(e: script::ScriptError) -> Self {
        Error::Script {
            line: e.line,
            message: e.message,
        }
    }
}
