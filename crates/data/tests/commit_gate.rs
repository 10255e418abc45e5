//! The commit gate a signal closes (`workspace::stop_commits`): once closed, no write lands,
//! in a local and an in-memory workspace; reads go on. Its own test binary: the gate closes
//! for the rest of the process, which would stop every other test's writes.

use std::time::Duration;

use diffrec_data::Workspace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_lands_once_commits_are_stopped() {
    let dir = std::env::temp_dir().join(format!(
        "diffrec-gate-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let local = Workspace::open(dir.to_str().unwrap()).unwrap();
    let memory = Workspace::open("memory://gate").unwrap();
    for ws in [&local, &memory] {
        ws.put_atomic("a/before.bin", &b"written before"[..])
            .await
            .unwrap();
    }

    assert!(diffrec_data::workspace::stop_commits(Duration::from_secs(2)).await);

    for ws in [&local, &memory] {
        // A write of bytes and one of JSON: neither finishes, neither lands.
        let put = ws.put_atomic("a/after.bin", &b"written after"[..]);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), put)
                .await
                .is_err(),
            "{}: a write finished after the gate closed",
            ws.url()
        );
        let value = serde_json::json!({"x": 1});
        let json = ws.put_json("a/after.json", &value);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), json)
                .await
                .is_err()
        );
        assert!(!ws.exists("a/after.bin").await.unwrap(), "{}", ws.url());
        assert!(!ws.exists("a/after.json").await.unwrap(), "{}", ws.url());
        // Reads are not held.
        assert_eq!(
            &ws.get("a/before.bin").await.unwrap()[..],
            b"written before"
        );
    }
    // The files a local workspace has: the one written before, and temporaries at most.
    let names: Vec<String> = std::fs::read_dir(dir.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.contains(".tmp-") && !n.contains('#'))
        .collect();
    assert_eq!(names, ["before.bin"]);
    // A second close finds it closed, at once.
    assert!(diffrec_data::workspace::stop_commits(Duration::from_millis(100)).await);
    let _ = std::fs::remove_dir_all(&dir);
}
