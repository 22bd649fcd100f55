//! A plugin host: the host opens a SQLite database, offers one host
//! function that reads it, and runs the same plugin at thread and at
//! process isolation. The function always runs here, in the host; a
//! process task's call crosses the pipe to it.
//!
//! ```text
//! cargo run --example plugin_host -- target/wasm32-wasip1/guest
//! ```
//!
//! The argument is a directory holding the guests built by `make guests`
//! (this uses `host_call.wasm`, which calls the function it is told to).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use isola::{HostFunctions, Isolation, Output, Runner, RunnerConfig, TaskSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/wasm32-wasip1/guest".into()),
    );
    // The host's own database: the plugin never sees the file, only what
    // the function returns.
    let db = rusqlite::Connection::open_in_memory()?;
    db.execute_batch(
        "CREATE TABLE greetings (lang TEXT PRIMARY KEY, text TEXT NOT NULL);
         INSERT INTO greetings VALUES ('en', 'Hello'), ('fr', 'Bonjour'), ('de', 'Hallo');",
    )?;
    let db = Arc::new(Mutex::new(db));

    let functions = HostFunctions::new().with("greeting", move |call| {
        let db = Arc::clone(&db);
        async move {
            // Part of the trusted host: the guest's argument is checked.
            let lang = String::from_utf8(call.args).map_err(|_| "a language code is UTF-8")?;
            if lang.len() != 2 {
                return Err(format!("`{lang}` is not a two-letter language code"));
            }
            tokio::task::spawn_blocking(move || {
                let db = db.lock().map_err(|_| "the database lock is poisoned")?;
                let text: Option<String> = db
                    .query_row(
                        "SELECT text FROM greetings WHERE lang = ?1",
                        [&lang],
                        |row| row.get(0),
                    )
                    .ok();
                text.map(String::into_bytes)
                    .ok_or_else(|| format!("no greeting in `{lang}`"))
            })
            .await
            .map_err(|e| e.to_string())?
        }
    });
    let runner = Runner::with_config(RunnerConfig {
        host_functions: functions,
        ..RunnerConfig::default()
    })?;

    for isolation in [Isolation::Thread, Isolation::Process] {
        for lang in ["fr", "de", "xx"] {
            let mut spec = TaskSpec::new(dir.join("host_call.wasm"));
            spec.isolation = isolation;
            spec.args = vec!["call".into(), "greeting".into(), lang.into()];
            spec.host_functions = vec!["greeting".into()];
            spec.stdout = Output::Capture;
            let report = runner.run(spec).await?;
            println!(
                "{isolation} {lang}: {} ({})",
                report.stdout.text().trim_end(),
                report.outcome
            );
        }
    }
    Ok(())
}
