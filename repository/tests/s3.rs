//! Repository scenarios against a real S3-compatible server: moto's server
//! (`pip install 'moto[server]'`), started on a free loopback port per test and killed on drop.
//! A missing moto fails the test with the install command; nothing is skipped.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_roundtrip_and_incremental() {
    let moto = Moto::start();
    common::roundtrip_and_incremental(moto.store("roundtrip")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_corrupt_and_truncated_chunk() {
    let moto = Moto::start();
    damaged_chunk(moto.store("corrupt"), false).await;
    damaged_chunk(moto.store("truncated"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_passphrase_and_unknown_format() {
    let moto = Moto::start();
    common::wrong_passphrase_and_unknown_format(moto.store("keys")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_chunk_and_unsafe_paths() {
    let moto = Moto::start();
    missing_chunk_is_reported(moto.store("missing")).await;
    unsafe_paths_are_refused(moto.store("unsafe")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults() {
    let moto = Moto::start();
    survives_faults(moto.store("faults")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_uncommitted_invisible() {
    let moto = Moto::start();
    uncommitted_backup_is_invisible(moto.store("pending")).await;
}
