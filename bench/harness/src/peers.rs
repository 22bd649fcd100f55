//! Running the Node.js peer scripts of `bench/node/`.
//!
//! Each script run is one round of one peer: it prints a JSON object on its
//! last stdout line (`{"unit": ..., "samples": [...]}` and extra fields),
//! which is returned here.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::Ctx;

/// Runs `bench/node/<script>` with `args` and returns its JSON result.
pub async fn node(ctx: &Ctx, script: &str, args: &[&str]) -> Result<Value> {
    let path = ctx.node_script(script);
    let output = tokio::process::Command::new(&ctx.node)
        .arg(&path)
        .args(args)
        .current_dir(ctx.root.join("bench"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running `{} {}`", ctx.node.display(), path.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "`node {script} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("`node {script}` printed no JSON result"))?;
    serde_json::from_str(line).with_context(|| format!("`node {script}` printed bad JSON"))
}

/// The numbers of array `key` of a peer's result.
pub fn numbers(value: &Value, key: &str) -> Result<Vec<f64>> {
    value
        .get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("peer result has no `{key}` array"))?
        .iter()
        .map(|v| v.as_f64().context("a sample is not a number"))
        .collect()
}

/// Runs a peer round and returns its `samples`.
pub async fn node_samples(ctx: &Ctx, script: &str, args: &[&str]) -> Result<Vec<f64>> {
    numbers(&node(ctx, script, args).await?, "samples")
}
