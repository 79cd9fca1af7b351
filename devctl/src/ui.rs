//! Terminal output: steps and warnings on stderr, a progress bar on a TTY (plain lines
//! otherwise), colours unless NO_COLOR is set or stderr is not a terminal.

use std::io::IsTerminal;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Ui {
    pub color: bool,
    pub tty: bool,
    pub quiet: bool,
}

const COLORS: &[&str] = &[
    "36", "33", "32", "35", "34", "91", "92", "93", "94", "95", "96",
];

impl Ui {
    pub fn detect(quiet: bool) -> Ui {
        let tty = std::io::stderr().is_terminal();
        let color = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Ui { color, tty, quiet }
    }

    fn paint(&self, text: &str, code: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn step(&self, text: &str) {
        if !self.quiet {
            eprintln!("{} {text}", self.paint("::", "34"));
        }
    }

    pub fn done(&self, text: &str) {
        if !self.quiet {
            eprintln!("{} {text}", self.paint("ok", "32"));
        }
    }

    pub fn warn(&self, text: &str) {
        eprintln!("{} {text}", self.paint("note:", "33"));
    }

    /// `name | line` with a colour per instance (stdout stays plain when not a terminal).
    pub fn prefixed(&self, n: usize, name: &str, width: usize, line: &str) -> String {
        let color = self.color && std::io::stdout().is_terminal();
        let prefix = format!("{name:<width$} |");
        if color {
            format!("\x1b[{}m{prefix}\x1b[0m {line}", COLORS[n % COLORS.len()])
        } else {
            format!("{prefix} {line}")
        }
    }

    pub fn progress(&self, len: u64, what: &str) -> Progress {
        if self.tty && !self.quiet {
            let bar = indicatif::ProgressBar::new(len);
            let style = indicatif::ProgressStyle::with_template(&format!(
                "{{spinner}} {{pos}}/{{len}} {what} [{{elapsed}}] {{wide_msg}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            Progress {
                bar: Some(bar),
                quiet: self.quiet,
                what: what.to_string(),
                len,
                count: 0,
            }
        } else {
            Progress {
                bar: None,
                quiet: self.quiet,
                what: what.to_string(),
                len,
                count: 0,
            }
        }
    }
}

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    what: String,
    len: u64,
    count: u64,
}

impl Progress {
    pub fn advance(&mut self, name: &str, at: Duration) {
        self.count += 1;
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.println(format!(
                    "   {name} {} ({:.1}s)",
                    self.what,
                    at.as_secs_f64()
                ));
            }
            None if !self.quiet => eprintln!(
                "   [{}/{}] {name} {} ({:.1}s)",
                self.count,
                self.len,
                self.what,
                at.as_secs_f64()
            ),
            None => {}
        }
    }

    pub fn message(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Progress of a long count (units of a build): a bar on a TTY, a line every 15 s otherwise.
pub struct Counter {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    what: String,
    len: u64,
    started: std::time::Instant,
    last_line: std::time::Instant,
}

impl Ui {
    /// `len` is an estimate (the last build's size): positions past it grow it.
    pub fn counter(&self, len: u64, what: &str) -> Counter {
        let now = std::time::Instant::now();
        let bar = (self.tty && !self.quiet).then(|| {
            let bar = indicatif::ProgressBar::new(len.max(1));
            let style = indicatif::ProgressStyle::with_template(&format!(
                "{{spinner}} [{{bar:30}}] {{pos}}/~{{len}} {what} [{{elapsed}}] {{wide_msg}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Counter {
            bar,
            quiet: self.quiet,
            what: what.to_string(),
            len,
            started: now,
            last_line: now,
        }
    }
}

impl Counter {
    pub fn set(&mut self, pos: u64, message: &str) {
        if pos > self.len {
            self.len = pos;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_length(self.len.max(1));
                bar.set_position(pos);
                bar.set_message(message.to_string());
            }
            None if !self.quiet && self.last_line.elapsed() >= Duration::from_secs(15) => {
                self.last_line = std::time::Instant::now();
                eprintln!(
                    "   [{pos}/~{}] {} ({:.0}s, now {message})",
                    self.len,
                    self.what,
                    self.started.elapsed().as_secs_f64()
                );
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
