//! The per-node agent (issue 7): task runner, upload/download pipeline, journal. Not yet built.
