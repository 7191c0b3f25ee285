//! The daemon's log on stderr: its filter, its form (text or one JSON object a line) and
//! colours only for a terminal (a file or the journal gets no escape sequences).

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use ax_cli::args::LogFormat;

/// Installs the log for the process: `--log-level` wins over RUST_LOG; without either, info.
pub fn init(level: Option<&str>, format: LogFormat) -> anyhow::Result<()> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| anyhow::anyhow!("--log-level {l}: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = colours(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()));
    tracing::subscriber::set_global_default(subscriber(filter, format, ansi, std::io::stderr))?;
    Ok(())
}

/// Colours for a terminal only, and not where NO_COLOR is set (no-color.org).
fn colours(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => Box::new(fmt.with_ansi(ansi).finish()),
        // Fields at the top level beside level and target: `message` is one of them.
        LogFormat::Json => Box::new(fmt.json().flatten_event(true).with_ansi(false).finish()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    /// What the log writes for two events (one filtered out), in `format`.
    fn written(format: LogFormat, ansi: bool) -> String {
        let buf = Buffer::default();
        let sub = subscriber(EnvFilter::new("info"), format, ansi, buf.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(app = "a1", "app registered: \"web\"\nat 198.18.0.1");
            tracing::debug!("not at info");
            tracing::warn!("port pool exhausted");
        });
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, false));
        assert!(!colours(false, false));
        assert!(!colours(true, true));
        assert!(written(LogFormat::Text, true).contains('\x1b'), "the terminal's form has colours");
        let plain = written(LogFormat::Text, false);
        assert!(!plain.contains('\x1b'), "{plain}");
        assert!(
            plain.contains(" INFO ") && plain.contains("app registered") && plain.contains("app=\"a1\""),
            "{plain}"
        );
    }

    #[test]
    fn json_is_one_object_a_line_with_level_message_and_fields() {
        let out = written(LogFormat::Json, true);
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect(l)).collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "app registered: \"web\"\nat 198.18.0.1");
        assert_eq!(lines[0]["app"], "a1");
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["message"], "port pool exhausted");
        assert!(lines[1]["timestamp"].is_string() && lines[1]["target"].is_string(), "{out}");
        assert!(!out.contains('\x1b'));
    }
}
