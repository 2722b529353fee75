//! The on-storage repository format (issue 5): chunks, manifests, catalog, verify, gc. Not yet built.
