//! k-means over LightGCN embeddings recovers the item groups planted by the synthetic
//! generator far better than chance, and far better than k-means over untrained embeddings.

use diffrec_cluster::LightGcnConfig;
use diffrec_cluster::ari::adjusted_rand_index;
use diffrec_cluster::checkpoint;
use diffrec_cluster::graph::NormalizedGraph;
use diffrec_cluster::kmeans;
use diffrec_cluster::lightgcn::{LightGcn, Pretrained, Pretraining, pretrain};
use diffrec_data::synthetic::{SyntheticSpec, item_groups, write_csv};
use diffrec_data::{CsrMatrix, SplitMatrices};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The synthetic log as splits: each user's last interaction is valid, the one before test.
fn splits(spec: &SyntheticSpec) -> SplitMatrices {
    let mut csv = Vec::new();
    write_csv(spec, &mut csv).unwrap();
    let text = String::from_utf8(csv).unwrap();
    let mut per_user: Vec<Vec<u32>> = vec![Vec::new(); spec.users];
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let u: usize = f[0][1..].parse().unwrap();
        per_user[u].push(f[1].parse().unwrap());
    }
    let mut t: [Vec<(u32, u32, f32)>; 3] = Default::default();
    for (u, items) in per_user.iter().enumerate() {
        let mut seen = std::collections::HashSet::new();
        let items: Vec<u32> = items.iter().copied().filter(|i| seen.insert(*i)).collect();
        let n = items.len();
        for (k, &i) in items.iter().enumerate() {
            let s = if k + 1 == n {
                1
            } else if k + 2 == n {
                2
            } else {
                0
            };
            t[s].push((u as u32, i, 1.0));
        }
    }
    let [tr, va, te] = t;
    let (nu, ni) = (spec.users, spec.items);
    SplitMatrices {
        n_users: nu,
        n_items: ni,
        train: CsrMatrix::from_triplets(nu, ni, tr),
        valid: CsrMatrix::from_triplets(nu, ni, va),
        test: CsrMatrix::from_triplets(nu, ni, te),
    }
}

#[test]
fn lightgcn_kmeans_recovers_planted_item_groups() {
    let spec = SyntheticSpec {
        users: 800,
        items: 240,
        clusters: 4,
        mean_interactions: 30.0,
        false_positive_rate: 0.02,
        seed: 11,
    };
    let truth = item_groups(&spec);
    let data = splits(&spec);
    let cfg = LightGcnConfig {
        dim: 16,
        layers: 2,
        lr: 0.01,
        batch_size: 1024,
        epochs: 40,
        eval_every: 5,
        patience: 3,
        ..LightGcnConfig::default()
    };
    let p = pretrain(&data, &cfg, 1, &[20], &mut |_| {}).unwrap();
    let c = kmeans::cluster(&p.items, cfg.dim, 4, 5, 1).unwrap();
    let ari = adjusted_rand_index(&c.labels, &truth);

    // The same k-means on the untrained (initial) item embeddings: the chance baseline.
    let g = NormalizedGraph::from_train(&data.train);
    let init = LightGcn::new(
        g.n_nodes(),
        cfg.dim,
        cfg.layers,
        &mut StdRng::seed_from_u64(1),
    );
    let init_items = &init.ego[data.n_users * cfg.dim..];
    let base = kmeans::cluster(init_items, cfg.dim, 4, 5, 1).unwrap();
    let chance = adjusted_rand_index(&base.labels, &truth);
    let best = p.best().expect("evaluated");
    println!(
        "planted groups: ARI {ari:.3} (untrained embeddings {chance:.3}); LightGCN valid recall@20 {:.3} at epoch {}; sizes {:?}",
        best.valid["recall@20"], p.best_epoch, c.sizes
    );
    assert!(ari > 0.6, "ARI {ari:.3} is not far above chance");
    assert!(
        chance.abs() < 0.1,
        "untrained embeddings should be near chance, got {chance:.3}"
    );
    assert!(best.valid["recall@20"] > 0.1, "LightGCN did not learn");
}

/// What a resumed run must reproduce: everything but the timings.
fn outcome(p: &Pretrained) -> impl PartialEq + std::fmt::Debug {
    let metrics: Vec<_> = p
        .evaluations
        .iter()
        .map(|e| (e.epoch, e.loss, e.valid.clone(), e.test.clone()))
        .collect();
    (
        p.users.clone(),
        p.items.clone(),
        p.best_epoch,
        p.epochs_run,
        metrics,
    )
}

#[test]
fn pretraining_resumed_from_its_checkpoints_ends_as_an_uninterrupted_run() {
    let spec = SyntheticSpec {
        users: 300,
        items: 120,
        clusters: 4,
        mean_interactions: 20.0,
        false_positive_rate: 0.02,
        seed: 5,
    };
    let data = splits(&spec);
    let cfg = LightGcnConfig {
        dim: 8,
        layers: 2,
        lr: 0.05,
        batch_size: 512,
        epochs: 60,
        eval_every: 3,
        patience: 2,
        ..LightGcnConfig::default()
    };
    let whole = pretrain(&data, &cfg, 3, &[10, 20], &mut |_| {}).unwrap();
    assert!(
        whole.epochs_run < cfg.epochs,
        "early stopping must end the run, so that its counter crosses a resume"
    );

    // A process per evaluation: each trains one stretch from the previous one's checkpoint
    // file (encoded and decoded, as the stage stores it) and is then dropped, as if killed.
    let mut file: Option<Vec<u8>> = None;
    let mut stretches = 0;
    let resumed = loop {
        let mut run = Pretraining::new(&data, &cfg, 3, &[10, 20]);
        if let Some(bytes) = &file {
            let (fp, snap) = checkpoint::decode(bytes).unwrap();
            assert_eq!(fp, "fp");
            run.restore(snap).unwrap();
        }
        let more = run.advance(&mut |_| {});
        stretches += 1;
        if !more {
            break run.finish().unwrap();
        }
        file = Some(checkpoint::encode("fp", &run.snapshot()));
    };
    assert_eq!(stretches, whole.evaluations.len());
    assert_eq!(outcome(&resumed), outcome(&whole));

    // A checkpoint of another width, or with counters no run of these settings has, is
    // refused, not silently mixed in.
    let (_, snap) = checkpoint::decode(file.as_ref().unwrap()).unwrap();
    let refused = |cfg: &LightGcnConfig, snap| {
        Pretraining::new(&data, cfg, 3, &[20])
            .restore(snap)
            .unwrap_err()
            .to_string()
    };
    let narrow = LightGcnConfig { dim: 4, ..cfg };
    let err = refused(&narrow, snap.clone());
    assert!(err.contains("cluster.lightgcn.dim"), "{err}");
    let shorter = LightGcnConfig { epochs: 2, ..cfg };
    let err = refused(&shorter, snap.clone());
    assert!(err.contains("of at most 2"), "{err}");
    let mut negative = snap;
    negative.adam_step = -1;
    let err = refused(&cfg, negative);
    assert!(err.contains("Adam step -1"), "{err}");
}

/// A fresh folder under the system's temporary directory with a generated log of 200 users × 80
/// items, ingested into its workspace `ws`.
async fn ingested_workspace(tag: &str) -> (std::path::PathBuf, diffrec_data::Workspace) {
    use diffrec_data::{DataConfig, Workspace, run_ingest};
    let dir = std::env::temp_dir().join(format!("diffrec-cluster-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = SyntheticSpec {
        users: 200,
        items: 80,
        ..SyntheticSpec::default()
    };
    let mut csv = Vec::new();
    write_csv(&spec, &mut csv).unwrap();
    std::fs::write(dir.join("log.csv"), csv).unwrap();
    let data: DataConfig = serde_json::from_value(serde_json::json!({
        "source": {"format": "csv", "path": "log.csv"}
    }))
    .unwrap();
    let ws = Workspace::open(dir.join("ws").to_str().unwrap()).unwrap();
    run_ingest(&ws, &data, &dir, false).await.unwrap();
    (dir, ws)
}

/// A cluster stage whose claim a later process took (here: written into `cluster/_owner`
/// during pre-training, as a scheduler's retry would) stops at its next write with the
/// concurrency error, writing no checkpoint, output or manifest; the later one owns the stage.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_stage_that_lost_its_claim_writes_nothing_more() {
    use diffrec_cluster::{ClusterConfig, Progress, run_cluster};
    let (dir, ws) = ingested_workspace("claim").await;
    let cfg: ClusterConfig = serde_json::from_value(serde_json::json!({
        "k": 2, "lightgcn": {"epochs": 4, "eval_every": 2, "dim": 8}
    }))
    .unwrap();
    let owner = dir.join("ws/cluster/_owner");
    let mut progress = |p: Progress| {
        if matches!(p, Progress::EpochStart { epoch: 1, .. }) {
            // A claim token as a later process writes it (`<pid>-<16 hex digits>`).
            std::fs::write(&owner, "99999-00000000000000ff").unwrap();
        }
    };
    let e = run_cluster(&ws, &cfg, &[10], &dir, false, &mut progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another process started the cluster stage") && e.contains("cluster/_owner"),
        "{e}"
    );
    let mut left: Vec<String> = std::fs::read_dir(dir.join("ws/cluster"))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["_owner"], "nothing but the later process's claim");
    assert_eq!(std::fs::read(&owner).unwrap(), b"99999-00000000000000ff");

    // Run alone, the stage completes.
    let report = run_cluster(&ws, &cfg, &[10], &dir, false, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(report.summary.k, 2);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The cluster stage run again with another `cluster.k` reuses the LightGCN embeddings that
/// its previous run pre-trained for the same settings and data (no epoch runs) and clusters
/// them as a run that pre-trains again (`force`) does. Other LightGCN settings, or embeddings
/// changed since, pre-train again.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_k_reuses_the_pretrained_embeddings() {
    use diffrec_cluster::{ClusterConfig, Progress, run_cluster};
    let (dir, ws) = ingested_workspace("reuse").await;
    let cfg = |k: usize, epochs: usize| -> ClusterConfig {
        serde_json::from_value(serde_json::json!({
            "k": k, "lightgcn": {"epochs": epochs, "eval_every": 2, "dim": 8}
        }))
        .unwrap()
    };
    let read = |key: &str| std::fs::read(dir.join("ws").join(key)).unwrap();
    // Runs the stage; returns its report and how many LightGCN epochs it ran.
    let run = |k: usize, epochs: usize, force: bool| {
        let (ws, dir, cfg) = (&ws, &dir, cfg(k, epochs));
        async move {
            let (mut ran, mut last) = (0, None);
            let mut count = |p: Progress| {
                if matches!(p, Progress::EpochStart { .. }) {
                    ran += 1;
                }
                last = Some(p);
            };
            let report = run_cluster(ws, &cfg, &[10], dir, force, &mut count)
                .await
                .unwrap();
            // k-means is announced last, pre-trained or not (the bar shows it).
            assert!(
                matches!(last, Some(Progress::Clustering { k: kk, items, .. }) if kk == k && items > 0),
                "{last:?}"
            );
            (report, ran)
        }
    };

    let (first, ran) = run(2, 4, false).await;
    assert_eq!((first.pretraining_reused, ran), (false, 4));
    let embeddings = read("cluster/item_embeddings.parquet");
    let (second, ran) = run(3, 4, false).await;
    assert_eq!((second.pretraining_reused, ran), (true, 0));
    assert_eq!(second.summary.k, 3);
    assert_eq!(second.summary.lightgcn, first.summary.lightgcn);
    assert_eq!(read("cluster/item_embeddings.parquet"), embeddings);
    let clusters = read("cluster/item_clusters.parquet");
    // Pre-trained again from the start: the same embeddings, the same clusters.
    let (forced, ran) = run(3, 4, true).await;
    assert_eq!((forced.pretraining_reused, ran), (false, 4));
    assert_eq!(read("cluster/item_embeddings.parquet"), embeddings);
    assert_eq!(read("cluster/item_clusters.parquet"), clusters);
    assert_eq!(
        (forced.summary.sizes, forced.summary.inertia),
        (second.summary.sizes, second.summary.inertia)
    );
    // Other LightGCN settings.
    let (other, ran) = run(3, 6, false).await;
    assert_eq!((other.pretraining_reused, ran), (false, 6));
    // Embeddings changed since the run that wrote them.
    let (_, ran) = run(2, 6, false).await;
    assert_eq!(ran, 0);
    std::fs::write(dir.join("ws/cluster/item_embeddings.parquet"), b"changed").unwrap();
    let (changed, ran) = run(3, 6, false).await;
    assert_eq!((changed.pretraining_reused, ran), (false, 6));
    std::fs::remove_dir_all(dir).unwrap();
}
