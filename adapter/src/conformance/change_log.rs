//! Change-log cases: reading it and the node scan (C15 + C18), gaps left by truncation
//! (C16), replay into a staged copy (C17).

use super::*;

/// Reads a tablet's change log after `after` until it covers `until` (polling: the tablet's
/// safe time passes `until` shortly after), in chunks of about `max_bytes`: the records and
/// their count. `covered` must never go back.
async fn read_log(
    store: &dyn NodeStore,
    tablet: &TabletId,
    after: HybridTime,
    until: HybridTime,
    max_bytes: u32,
) -> (Vec<u8>, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut records, mut count) = (Vec::new(), 0u64);
    let (mut from, mut cursor) = (after, crate::LogCursor::default());
    loop {
        let chunk = ok(
            store.read_change_log(tablet, from, cursor, max_bytes).await,
            &format!("reading the change log of tablet {tablet}"),
        );
        assert!(chunk.gap.is_none(), "no gap expected: {chunk:?}");
        assert!(
            chunk.covered >= from,
            "covered went back: {} < {from}",
            chunk.covered
        );
        records.extend_from_slice(&chunk.records);
        count += u64::from(chunk.count);
        from = chunk.covered;
        cursor = chunk.cursor;
        if !chunk.more && from >= until {
            return (records, count);
        }
        assert!(
            Instant::now() < deadline,
            "tablet {tablet}'s log never covered {until}"
        );
        if !chunk.more {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// C15 + C18: each node lists exactly its own tablets of a database; the change log of every
/// tablet holds each write once, read in small or large chunks alike; an unknown tablet is
/// `NotFound`.
pub async fn c15_change_log_and_node_scan(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let start = ok(db.now().await, "now");
    let rows = 200;
    h.load(&c, "c15", 0, rows).await;
    let end = ok(db.now().await, "now");
    let d = ok(db.describe("c15").await, "describe");
    let stores = node_stores(h, &c).await;
    let mut listed = BTreeSet::new();
    for s in &stores {
        let scan = ok(s.scan_tablets(&d.id).await, "scanning a node");
        assert!(
            scan.at >= start,
            "scan time {} before the tablets existed",
            scan.at
        );
        for t in &scan.tablets {
            let (table, p) = d
                .tables
                .iter()
                .find_map(|tb| {
                    tb.tablets
                        .iter()
                        .find(|p| p.id == t.tablet)
                        .map(|p| (tb, p))
                })
                .unwrap_or_else(|| panic!("node {} lists unknown tablet {t:?}", s.node()));
            assert_eq!((&p.node, &table.id), (s.node(), &t.table), "{t:?}");
            assert!(
                listed.insert(t.tablet.clone()),
                "tablet {} listed twice",
                t.tablet
            );
        }
    }
    let all: BTreeSet<TabletId> = d
        .tables
        .iter()
        .flat_map(|t| t.tablets.iter().map(|p| p.id.clone()))
        .collect();
    assert_eq!(listed, all, "the nodes list every tablet of the database");

    let mut total = 0;
    for t in &d.tables {
        for p in &t.tablets {
            let s = store(&stores, &p.node);
            let (small, n_small) = read_log(s.as_ref(), &p.id, start, end, 1024).await;
            let (large, n_large) = read_log(s.as_ref(), &p.id, start, end, 1 << 20).await;
            assert_eq!((&small, n_small), (&large, n_large), "tablet {}", p.id);
            total += n_small;
        }
    }
    assert_eq!(total, rows, "every write is in the change log once");
    let unknown = TabletId::new("no-such-tablet").expect("id");
    permanent(
        stores[0]
            .read_change_log(&unknown, start, Default::default(), 1024)
            .await,
        is_not_found,
        "reading the log of an unknown tablet",
    );
}

/// C16: on a cluster keeping 2 s of history, with writes going on, the change log is
/// truncated as time passes. A read from before the truncation reports the gap (`Some(t)`,
/// `t` at or after the read's start) instead of skipping records silently; a read after `t`
/// has no gap and holds every write after `t`.
pub async fn c16_change_log_gap(h: &mut dyn Harness) {
    let c = h
        .start_cluster_with_history(1, Duration::from_secs(2))
        .await;
    let db = connect(h, &c).await;
    let start = ok(db.now().await, "now");
    let counter = h.start_counter(&c, "c16").await;
    counter.wait_for_keys(20).await;
    let d = ok(db.describe("c16").await, "describe");
    let stores = node_stores(h, &c).await;
    let tablets: Vec<(TabletId, Arc<dyn NodeStore>)> = d
        .tables
        .iter()
        .flat_map(|t| t.tablets.iter())
        .map(|p| (p.id.clone(), store(&stores, &p.node).clone()))
        .collect();
    assert!(!tablets.is_empty(), "{d:?}");
    let read_from = |s: &Arc<dyn NodeStore>, tablet: &TabletId, after: HybridTime| {
        let (s, tablet) = (s.clone(), tablet.clone());
        async move {
            ok(
                s.read_change_log(&tablet, after, Default::default(), 1 << 20)
                    .await,
                &format!("reading the change log of tablet {tablet} after {after}"),
            )
        }
    };
    for (tablet, s) in &tablets {
        let chunk = read_from(s, tablet, start).await;
        assert_eq!(chunk.gap, None, "no gap yet on tablet {tablet}: {chunk:?}");
    }

    // The writes go on while the window passes: waiting for time is what the case is about.
    // (An adapter may truncate in whole segments and on its own schedule: allow a minute.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut gaps: Vec<Option<HybridTime>> = vec![None; tablets.len()];
    while gaps.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "no gap reported after a minute on a 2 s history window: {} of {} tablets",
            gaps.iter().filter(|g| g.is_some()).count(),
            tablets.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        for ((tablet, s), gap) in tablets.iter().zip(gaps.iter_mut()) {
            if gap.is_none() {
                *gap = read_from(s, tablet, start).await.gap;
            }
        }
    }
    let log = counter.stop().await;
    let end = ok(db.now().await, "now");
    let gaps: Vec<HybridTime> = gaps.into_iter().flatten().collect();
    let mut total = 0;
    for ((tablet, s), gap) in tablets.iter().zip(&gaps) {
        assert!(
            *gap >= start && *gap < end,
            "tablet {tablet}: the gap {gap} is not between the read's start {start} and now {end}"
        );
        // No gap after it (`read_log` checks), and `covered` never goes back.
        total += read_log(s.as_ref(), tablet, *gap, end, 1 << 20).await.1;
    }
    let after = |t: HybridTime| log.iter().filter(|(_, ht)| *ht > t).count() as u64;
    let (first, last) = (
        *gaps.iter().min().expect("gaps"),
        *gaps.iter().max().expect("gaps"),
    );
    // Per tablet, the records after its gap are exactly its writes after it; over all
    // tablets that is between the writes after the latest gap and after the earliest one
    // (plus the last key, whose acknowledgement stopping the writer may have cut off).
    assert!(
        after(last) <= total && total <= after(first) + 1,
        "the records after the gaps ({total}) are not the writes after them: {} after the \
         latest gap, {} after the earliest",
        after(last),
        after(first)
    );
    assert!(after(last) > 0, "writes went on after the gaps");
}

/// C17: a snapshot at T0, staged, rolled forward with the change log of (T0, T1] (applied
/// twice), activated at T1, equals the source at T1; records of another tablet are refused.
pub async fn c17_replay_to_a_time(h: &mut dyn Harness) {
    let c = h.start_cluster(3).await;
    let db = connect(h, &c).await;
    let tables = h.load(&c, "c17", 0, 150).await;
    let snap = ok(db.create_snapshot(snapshot_req("c17")).await, "snapshot");
    let t0 = snap.hybrid_time;
    h.load(&c, "c17", 150, 100).await;
    let t1 = ok(db.now().await, "now");
    h.load(&c, "c17", 250, 50).await; // after T1: must not appear
    let restore_id = RestoreId::new("c17-restore").expect("id");
    let prepared = ok(
        db.prepare_restore(RestoreRequest {
            restore_id: &restore_id,
            database: "c17_copy",
            snapshot: &snap,
            tables: &[],
        })
        .await,
        "preparing",
    );
    let stores = node_stores(h, &c).await;
    ship(&snap, &restore_id, &prepared, &stores, &stores, None).await;
    let mut logs = Vec::new();
    for p in &prepared.tablets {
        let (_, src) = snap.tablet(&p.source_tablet).expect("source tablet");
        let from = store(&stores, &src.node);
        logs.push(read_log(from.as_ref(), &p.source_tablet, t0, t1, 1 << 20).await);
    }
    let (mut replayed, mut foreign_checked) = (0, 0);
    for (i, p) in prepared.tablets.iter().enumerate() {
        let staged = store(&stores, &p.node).staging_dir(&restore_id, &p.source_tablet);
        let mut r = ok(
            store(&stores, &p.node).open_replay(&staged).await,
            "opening a staged tablet for replay",
        );
        assert_eq!(
            r.snapshot_ht(),
            t0,
            "the staged copy is at the snapshot's time"
        );
        // Records of another tablet of the same table (another hash range) are refused.
        // (Of another table with the same ranges, an adapter may not be able to tell.)
        let table = snap.tablet(&p.source_tablet).map(|(t, _)| &t.id);
        let foreign = prepared.tablets.iter().zip(&logs).position(|(q, (_, n))| {
            *n > 0
                && q.source_tablet != p.source_tablet
                && snap.tablet(&q.source_tablet).map(|(t, _)| &t.id) == table
        });
        if let Some(j) = foreign {
            foreign_checked += 1;
            permanent(
                r.apply(logs[j].0.clone(), t0, t1).await,
                |e| matches!(e, AdapterError::Invalid { .. }),
                "applying another tablet's records",
            );
        }
        let first = ok(r.apply(logs[i].0.clone(), t0, t1).await, "applying");
        let again = ok(r.apply(logs[i].0.clone(), t0, t1).await, "applying again");
        assert_eq!(first, again, "both passes select the same records");
        ok(r.finish(t1, &[]).await, "finishing the replay");
        replayed += first;
    }
    assert_eq!(replayed, 100, "the writes of (T0, T1] are replayed");
    assert!(
        foreign_checked > 0,
        "some tablet was offered another's records"
    );
    ok(
        db.activate_restore(Activation {
            restore_id: &restore_id,
            database: "c17_copy",
            restore_ht: t1,
            tables: &prepared.tables,
            tablets: &prepared.tablets,
        })
        .await,
        "activating at T1",
    );
    for t in &tables {
        assert_eq!(
            h.checksum(&c, "c17_copy", t, None).await,
            h.checksum(&c, "c17", t, Some(t1)).await,
            "table {t} replayed to T1 equals the source at T1"
        );
    }
}
