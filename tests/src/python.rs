//! The Python side of the Kombu/Celery interop tests: a virtual environment with Kombu
//! and Celery from PyPI that `scripts/setup.sh` makes under `target/kombu-venv`.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Names a Python with `kombu`, `celery` and `redis` importable, when not the project's
/// virtual environment.
pub const KOMBU_PYTHON_ENV: &str = "RINGQ_KOMBU_PYTHON";

/// The Python interpreter of the Kombu/Celery virtual environment: `$RINGQ_KOMBU_PYTHON`,
/// else `target/kombu-venv/bin/python` in the workspace.
///
/// # Errors
/// A message saying how to get one (run `scripts/setup.sh`) when neither exists or
/// Kombu, Celery or redis-py cannot be imported with it.
pub fn kombu_python() -> Result<PathBuf, String> {
    let python = std::env::var_os(KOMBU_PYTHON_ENV).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/kombu-venv/bin/python"),
        PathBuf::from,
    );
    let check = Command::new(&python)
        .args(["-c", "import kombu, celery, redis"])
        .output();
    match check {
        Ok(o) if o.status.success() => Ok(python),
        Ok(o) => Err(format!(
            "{} cannot import kombu, celery and redis ({}): run scripts/setup.sh, which \
             installs them from PyPI into target/kombu-venv, or set {KOMBU_PYTHON_ENV}",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "no Python for the Kombu tests at {} ({e}): run scripts/setup.sh, which makes \
             target/kombu-venv, or set {KOMBU_PYTHON_ENV}",
            python.display()
        )),
    }
}

/// Runs `script` with the Kombu Python and `env`, returning its output (panicking with
/// its stderr if it fails).
pub fn run_python(script: &str, env: &[(&str, &str)]) -> Output {
    let python = kombu_python().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(python)
        .args(["-c", script])
        .envs(env.iter().copied())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the Python script failed:\n{}\n--- script ---\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Parses a Prometheus/OpenMetrics text exposition with Python `prometheus-client`'s
/// OpenMetrics parser (an independent implementation; the package is in the same
/// virtual environment): every sample as `name{label=value,...}` (labels sorted) and
/// its value. Panics, with the parser's message, on an exposition it refuses.
pub fn parse_openmetrics(text: &str) -> Vec<(String, f64)> {
    let script = r#"
import os
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(os.environ["BODY"]):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let out = run_python(script, &[("BODY", text)]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}
